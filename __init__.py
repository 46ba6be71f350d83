"""FiftyOne plugin ``@bifta/bifta``: registers the BiFTA operators (and panels).

FiftyOne imports this file as a package (``fiftyone.plugins.orgs.bifta.bifta``),
so the library next to it is reached with relative imports. Nothing heavy is
imported here: the operators import the engine (torch, open_clip) only inside
``execute``, so listing plugins or operators stays fast.
"""

from .bifta_plugin.ui.describe_operator import GenerateDescriptions
from .bifta_plugin.ui.operators import (
    DeleteBiftaRun,
    GetBiftaRunInfo,
    RunBifta,
)
from .bifta_plugin.ui.panels import ExplanationPanel, MispredictionsPanel
from .bifta_plugin.ui.calibration_panel import CalibrationPanel
from .bifta_plugin.ui.prelabel_operators import (
    AcceptLabels,
    CalibratePrelabel,
    LoadReview,
    PrelabelSamples,
    SendToReview,
)


def register(p):
    p.register(RunBifta)
    p.register(GetBiftaRunInfo)
    p.register(DeleteBiftaRun)
    p.register(GenerateDescriptions)
    p.register(MispredictionsPanel)
    p.register(ExplanationPanel)
    p.register(CalibratePrelabel)
    p.register(PrelabelSamples)
    p.register(SendToReview)
    p.register(LoadReview)
    p.register(AcceptLabels)
    p.register(CalibrationPanel)
