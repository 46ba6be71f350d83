"""Operator ``generate_descriptions``: CuPL-style class descriptions from an LLM.

A thin shell over :func:`bifta_plugin.generation.generate_descriptions`
(any OpenAI-compatible endpoint). The endpoint comes from the form
(``base_url``, ``model``) or else from the plugin secrets / environment
(``BIFTA_LLM_BASE_URL``, ``BIFTA_LLM_MODEL``); the API key comes *only* from
the secrets / environment (``BIFTA_LLM_API_KEY``, ``OPENAI_API_KEY``): it is
never a param and never part of the results.

The output file is also a cache: classes already in it are not asked for
again, so re-running after an interruption only fills in the rest.

Like :mod:`.operators`, this module imports FiftyOne only; the generation
module is imported inside ``execute``.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as ui
from .operators import ICON, _classes_inputs, _classes_kwargs, _preview

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES_PER_PROMPT = 10
DEFAULT_TEMPERATURE = 0.99


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
            icon=ICON,
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
        from .. import generation  # stdlib HTTP; kept out of registration

        classes = _resolve_classes(ctx)
        output_path = _output_path(ctx.params)
        kwargs = _generation_kwargs(ctx.params)
        todo = _classes_to_generate(generation, classes, output_path)
        progress = None
        if ctx.delegated:
            progress = _DelegatedProgress(ctx)
        result = generation.generate_descriptions(
            classes,
            output_path,
            secrets=ctx.secrets,
            progress=progress,
            **kwargs,
        )
        return describe_results(result, output_path, todo)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.md(summary_markdown(ctx.results or {}), name="summary_md")
        return types.Property(
            outputs, view=types.View(label="Class descriptions")
        )


# ----------------------------------------------------------------------------
# The form
# ----------------------------------------------------------------------------
def _describe_inputs(ctx, inputs) -> bool:
    """Build the form; returns whether it is ready to execute."""
    ready = _classes_inputs(ctx, inputs)
    ready &= _output_inputs(ctx, inputs)
    ready &= _endpoint_inputs(ctx, inputs)
    ready &= _sampling_inputs(ctx, inputs)
    return ready


def _output_inputs(ctx, inputs) -> bool:
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
        return False
    message = output_path_error(path)
    if message:
        ui.set_invalid(prop, message)
        return False
    if os.path.exists(path):
        ui.notice(
            inputs,
            "output_exists",
            f"{path} exists: only the classes missing from it are generated",
        )
    return True


def _endpoint_inputs(ctx, inputs) -> bool:
    prop = inputs.str(
        "base_url",
        label="Endpoint base URL (optional)",
        description=(
            "An OpenAI-compatible API, e.g. http://localhost:11434/v1; empty: "
            "the BIFTA_LLM_BASE_URL secret, else https://api.openai.com/v1"
        ),
    )
    inputs.str(
        "model",
        label="Model (optional)",
        description="Empty: the BIFTA_LLM_MODEL secret, else gpt-4o-mini",
    )
    ui.notice(
        inputs,
        "api_key_note",
        "The API key is read from the BIFTA_LLM_API_KEY secret (or "
        "environment variable), never from this form",
    )
    message = base_url_error(ctx.params.get("base_url"))
    if message:
        ui.set_invalid(prop, message)
        return False
    return True


def _sampling_inputs(ctx, inputs) -> bool:
    ready = True
    samples = inputs.int(
        "samples_per_prompt",
        default=DEFAULT_SAMPLES_PER_PROMPT,
        min=1,
        label="Samples per prompt",
        description="Replies per question prompt (5 prompts per class)",
    )
    value = ctx.params.get("samples_per_prompt")
    if value is not None and (not isinstance(value, int) or value < 1):
        ui.set_invalid(samples, "Enter an integer >= 1")
        ready = False
    temperature = inputs.float(
        "temperature",
        default=DEFAULT_TEMPERATURE,
        min=0.0,
        max=2.0,
        label="Temperature",
        description="Sampling temperature, 0-2 (CuPL used 0.99)",
    )
    value = ctx.params.get("temperature")
    if value is not None and not (
        isinstance(value, (int, float)) and 0 <= value <= 2
    ):
        ui.set_invalid(temperature, "Enter a number between 0 and 2")
        ready = False
    inputs.str(
        "prompt_context",
        label="Prompt context (optional)",
        description="A hint placed after the class name, e.g. 'a type of bird'",
    )
    return ready


def output_path_error(path: str) -> str | None:
    if not path.lower().endswith(".json"):
        return "The output file must end in .json"
    return None


def base_url_error(value) -> str | None:
    if value is None or not str(value).strip():
        return None
    scheme = urllib.parse.urlsplit(str(value).strip()).scheme
    if scheme not in ("http", "https"):
        return "The base URL must start with http:// or https://"
    return None


# ----------------------------------------------------------------------------
# Params -> generate_descriptions
# ----------------------------------------------------------------------------
def _resolve_classes(ctx) -> list[str]:
    kwargs = _classes_kwargs(ctx.params)
    if "classes_field" in kwargs:
        field = kwargs["classes_field"]
        classes = ui.distinct_labels(ctx.dataset, field)
        if not classes:
            raise ValueError(f"field '{field}' has no labels")
        return classes
    return kwargs["classes"]


def _output_path(params: dict) -> str:
    path = ui.parse_path(params.get("output_path"))
    if path is None:
        raise ValueError("no output_path given")
    message = output_path_error(path)
    if message:
        raise ValueError(message)
    return path


def _generation_kwargs(params: dict) -> dict:
    """The keywords taken from the params; never an API key."""
    kwargs = {}
    for name in ("base_url", "model", "prompt_context"):
        value = params.get(name)
        if isinstance(value, str) and value.strip():
            kwargs[name] = value.strip()
    for name in ("samples_per_prompt", "temperature"):
        if params.get(name) is not None:
            kwargs[name] = params[name]
    return kwargs


def _classes_to_generate(generation, classes, output_path) -> list[str]:
    """The classes the call will ask for (those not in the file yet)."""
    from ..descriptions import _check_classes

    try:
        unique, _ = _check_classes(classes)
        cached = generation._read_cache(Path(output_path))
    except (ValueError, OSError):
        return list(classes)  # generate_descriptions reports the problem
    return generation._classes_to_generate(unique, cached)


class _DelegatedProgress:
    """``progress(done, total)`` -> ``ctx.set_progress`` (delegated runs)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __call__(self, done: int, total: int) -> None:
        fraction = min(1.0, done / total) if total else 1.0
        try:
            self.ctx.set_progress(
                progress=fraction, label=f"{done}/{total} prompts"
            )
        except Exception as e:  # progress must never fail the run
            logger.debug("could not report progress: %s", e)


def describe_results(result, output_path: str, todo) -> dict:
    """The operator's results (JSON-able; no API key by construction)."""
    generated = [c for c in todo if c in result.descriptions]
    return dict(
        output_path=str(output_path),
        classes=list(result.classes),
        num_descriptions=sum(len(v) for v in result.descriptions.values()),
        generated_classes=generated,
        missing_classes=result.missing_classes(),
        model=result.provenance.get("model"),
        base_url=result.provenance.get("base_url"),
        requests=result.provenance.get("requests"),
        summary=result.summary(),
    )


def summary_markdown(results: dict) -> str:
    """A short markdown report of the results dict."""
    classes = results.get("classes") or []
    generated = results.get("generated_classes") or []
    lines = [f"**Descriptions file:** `{results.get('output_path')}`"]
    lines.append(
        f"- Classes: {len(classes)} ({len(generated)} generated now, "
        f"{len(classes) - len(generated)} already in the file)"
    )
    lines.append(f"- Descriptions: {results.get('num_descriptions', 0)}")
    if results.get("model"):
        lines.append(
            f"- Model: `{results['model']}` at `{results.get('base_url')}`"
        )
    missing = results.get("missing_classes") or []
    if missing:
        lines.append(
            f"- **Missing:** {len(missing)} classes got no usable sentence: "
            f"{_preview(missing)} (re-run to retry them)"
        )
    if generated:
        lines.append(f"- Generated: {_preview(generated)}")
    return "\n".join(lines)
