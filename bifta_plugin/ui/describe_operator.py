"""Operator ``generate_descriptions``: CuPL-style class descriptions from an LLM.

A thin shell over :func:`bifta_plugin.generation.generate_descriptions`
(any OpenAI-compatible endpoint). The endpoint comes from the form
(``base_url``, ``model``) or else from the plugin secrets / environment
(``BIFTA_LLM_BASE_URL``, ``BIFTA_LLM_MODEL``); the API key comes *only* from
the secrets / environment (``BIFTA_LLM_API_KEY``, ``OPENAI_API_KEY``): it is
never a param and never part of the results.

The output file is also a cache: classes already in it are not asked for
again, so re-running after an interruption only fills in the rest.

Like :mod:`.operators`, this module imports FiftyOne only at import time;
the generation modules (pure Python, no torch) are imported when the form
shows its plan and in ``execute``.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as ui
from . import llm
from .classes_form import classes_inputs, resolve_classes
from .progress import report_to_ctx


class GenerateDescriptions(foo.Operator):
    """Writes a ``{class: [sentences]}`` descriptions file with an LLM."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="generate_descriptions",
            label="BiFTA: generate class descriptions (LLM)",
            description=(
                "Write CuPL-style class descriptions with an OpenAI-compatible "
                "LLM endpoint, for the bifta / wca / descriptions methods"
            ),
            icon=ui.ICON,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _describe_inputs(ctx, inputs)
        return types.Property(
            inputs, view=types.View(label="Generate class descriptions")
        )

    def resolve_run_name(self, ctx):
        path = ui.parse_path(ctx.params.get("output_path")) or "?"
        return f"BiFTA descriptions -> {path}"

    def execute(self, ctx):
        from ..descriptions import generation  # stdlib HTTP; kept out of registration

        classes = resolve_classes(ctx.dataset, ctx.params)
        events = generation.iter_generate_descriptions(
            classes,
            _output_path(ctx.params),
            secrets=ctx.secrets,
            **llm.generation_kwargs(ctx.params),
        )
        # delegated: progress in the run's status; immediate: set_progress
        # is a no-op and the result comes back at once
        return llm.generation_results(report_to_ctx(ctx, events))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.md(
            llm.generation_markdown(ctx.results or {}), name="summary_md"
        )
        return types.Property(
            outputs, view=types.View(label="Class descriptions")
        )


# ----------------------------------------------------------------------------
# The form
# ----------------------------------------------------------------------------
def _describe_inputs(ctx, inputs) -> bool:
    """Build the form; returns whether it is ready to execute."""
    classes = classes_inputs(ctx, inputs)
    output = _output_inputs(ctx, inputs)
    ready = classes is not None and output is not None
    ready &= llm.endpoint_inputs(ctx, inputs)
    ready &= llm.sampling_inputs(ctx, inputs)
    if ready:
        prop, path = output
        ready &= llm.plan_inputs(ctx, inputs, prop, path, classes)
    return ready


def _output_inputs(ctx, inputs):
    """The output file input; ``(property, path)`` when valid, else None."""
    prop = inputs.str(
        "output_path",
        required=True,
        label="Output file",
        description=(
            "The .json descriptions file to write; classes already in it are "
            "kept and not asked for again"
        ),
    )
    path = ui.parse_path(ctx.params.get("output_path"))
    if path is None:
        return None
    message = llm.json_path_error(path)
    if message:
        ui.set_invalid(prop, message)
        return None
    return prop, path


def _output_path(params: dict) -> str:
    path = ui.parse_path(params.get("output_path"))
    if path is None:
        raise ValueError("no output_path given")
    message = llm.json_path_error(path)
    if message:
        raise ValueError(message)
    return path
