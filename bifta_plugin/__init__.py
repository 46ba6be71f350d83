"""BiFTA / WCA zero-shot classification with CLIP, for FiftyOne.

Layers (see docs/ARCHITECTURE.md): ``core`` (pure math and config),
``engine`` (open_clip glue and the pipeline: torch, never FiftyOne),
``descriptions`` (files and LLM generation: torch-free), ``sdk`` (the
FiftyOne layer), ``cli`` and ``ui``. ``import bifta_plugin`` imports none of
torch, open_clip or FiftyOne: the names below resolve on first use
(PEP 562), e.g. ``bifta_plugin.run_bifta`` imports :mod:`.sdk.run`.
"""

import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "run_bifta": "sdk.run",
    "iter_bifta": "sdk.run",
    "make_plan": "sdk.plan",
    "EncoderSpec": "sdk.options",
    "RunOptions": "sdk.options",
    "OutputSpec": "sdk.options",
    "calibrate": "sdk.calibration",
    "prelabel": "sdk.prelabel",
    "plan_prelabel": "sdk.prelabel",
    "accept_labels": "sdk.accept",
    "RunResult": "sdk.results",
    "SampleFailedError": "sdk.results",
    "resolve_descriptions": "sdk.plan",
    "BiftaModel": "sdk.model",
    "list_bifta_runs": "sdk.records",
    "get_bifta_run_info": "sdk.records",
    "load_bifta_config": "sdk.records",
    "latest_bifta_run": "sdk.records",
    "delete_bifta_run": "sdk.records",
    "score_field": "sdk.records",
    "safe_field_names": "sdk.labels",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
