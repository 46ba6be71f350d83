"""The LLM part of the forms: endpoint and sampling settings for description
generation, shared by ``generate_descriptions`` (params ``base_url``,
``model``, ...) and ``run_bifta`` (the same names prefixed ``llm_``, beside
its CLIP ``model_name``).

The API key is never an input: it comes only from the plugin secrets or the
environment (``BIFTA_LLM_API_KEY``, ``OPENAI_API_KEY``), and the form only
says whether one is set.
"""

from __future__ import annotations

import urllib.parse


from ..core.classnames import preview
from . import _common as ui

DEFAULT_SAMPLES_PER_PROMPT = 10
DEFAULT_TEMPERATURE = 0.99
#: generation keywords set from the form (never an API key)
TEXT_SETTINGS = ("base_url", "model", "prompt_context")
NUMBER_SETTINGS = ("samples_per_prompt", "temperature")


def endpoint_inputs(ctx, inputs, prefix: str = "") -> bool:
    """Base URL and model inputs plus a note on where the key comes from."""
    prop = inputs.str(
        prefix + "base_url",
        label="LLM endpoint base URL (optional)",
        description=(
            "An OpenAI-compatible API, e.g. http://localhost:11434/v1; empty: "
            "the BIFTA_LLM_BASE_URL secret, else https://api.openai.com/v1"
        ),
    )
    inputs.str(
        prefix + "model",
        label="LLM model (optional)",
        description="Empty: the BIFTA_LLM_MODEL secret, else gpt-4o-mini",
    )
    ui.notice(
        inputs,
        prefix + "api_key_note",
        "The API key is read from the BIFTA_LLM_API_KEY secret (or "
        "environment variable), never from this form",
    )
    message = base_url_error(ctx.params.get(prefix + "base_url"))
    if message:
        ui.set_invalid(prop, message)
        return False
    return True


def sampling_inputs(ctx, inputs, prefix: str = "") -> bool:
    """Samples per prompt, temperature and the optional prompt context."""
    ready = True
    samples = inputs.int(
        prefix + "samples_per_prompt",
        default=DEFAULT_SAMPLES_PER_PROMPT,
        min=1,
        label="Samples per prompt",
        description="Replies per question prompt (5 prompts per class)",
    )
    value = ctx.params.get(prefix + "samples_per_prompt")
    if value is not None and (not isinstance(value, int) or value < 1):
        ui.set_invalid(samples, "Enter an integer >= 1")
        ready = False
    temperature = inputs.float(
        prefix + "temperature",
        default=DEFAULT_TEMPERATURE,
        min=0.0,
        max=2.0,
        label="Temperature",
        description="Sampling temperature, 0-2 (CuPL used 0.99)",
    )
    value = ctx.params.get(prefix + "temperature")
    if value is not None and not (
        isinstance(value, (int, float)) and 0 <= value <= 2
    ):
        ui.set_invalid(temperature, "Enter a number between 0 and 2")
        ready = False
    inputs.str(
        prefix + "prompt_context",
        label="Prompt context (optional)",
        description="A hint placed after the class name, e.g. 'a type of bird'",
    )
    return ready


def base_url_error(value) -> str | None:
    if value is None or not str(value).strip():
        return None
    scheme = urllib.parse.urlsplit(str(value).strip()).scheme
    if scheme not in ("http", "https"):
        return "The base URL must start with http:// or https://"
    return None


def json_path_error(path: str) -> str | None:
    """Generated descriptions are written as ``{class: [sentences]}`` JSON."""
    if not path.lower().endswith(".json"):
        return "The descriptions file to write must end in .json"
    return None


def generation_kwargs(params: dict, prefix: str = "") -> dict:
    """``generate_descriptions`` keywords from the params; never an API key."""
    kwargs = {}
    for name in TEXT_SETTINGS:
        value = params.get(prefix + name)
        if isinstance(value, str) and value.strip():
            kwargs[name] = value.strip()
    for name in NUMBER_SETTINGS:
        if params.get(prefix + name) is not None:
            kwargs[name] = params[prefix + name]
    return kwargs


def endpoint_summary(params: dict, secrets, prefix: str = "") -> tuple[str, str | None]:
    """How generation will resolve the endpoint, and why it cannot run.

    Returns:
        ``("`model` at URL (API key set | no API key)", problem or None)``;
        never the key itself. The problem mirrors
        ``generate_descriptions``' own checks (a bad URL; no key for
        api.openai.com).
    """
    from ..descriptions.llm_client import resolve_endpoint  # stdlib HTTP only

    kwargs = generation_kwargs(params, prefix)
    try:
        endpoint = resolve_endpoint(
            kwargs.get("base_url"), kwargs.get("model"), secrets=secrets
        )
    except ValueError as e:
        return "an unusable endpoint", str(e)
    key = "API key set" if endpoint.api_key else "no API key"
    summary = f"`{endpoint.model}` at {endpoint.public_url} ({key})"
    if endpoint.lacks_required_key:
        return summary, (
            "No API key for api.openai.com: set the BIFTA_LLM_API_KEY secret "
            "(or environment variable), or give the base URL of a local "
            "server"
        )
    return summary, None


def plan_inputs(
    ctx, inputs, path_prop, path: str, classes, prefix: str = "", when: str = ""
) -> bool:
    """A notice of what generation will ask for and with which endpoint;
    a malformed file marks ``path_prop`` invalid, an endpoint that cannot
    run (e.g. no key for api.openai.com) the base URL input. Never calls
    the LLM."""
    from ..descriptions.generation import classes_to_generate  # pure Python

    try:
        todo = classes_to_generate(classes, path)
    except (ValueError, OSError) as e:
        ui.set_invalid(path_prop, str(e))
        return False
    if not todo:
        ui.notice(
            inputs,
            "generation_plan",
            f"All {len(classes)} classes already have descriptions in "
            f"{path}: nothing will be asked of the LLM",
        )
        return True
    endpoint, problem = endpoint_summary(ctx.params, ctx.secrets, prefix)
    ui.notice(
        inputs,
        "generation_plan",
        f"{len(todo)} of {len(classes)} classes will be generated"
        f"{' ' + when if when else ''} ({preview(todo)}) with {endpoint}",
    )
    if problem:
        ui.set_invalid(inputs.get_property(prefix + "base_url"), problem)
        return False
    return True


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------
def generation_results(result) -> dict:
    """A generation's summary for operator results (JSON-able; no API key
    by construction).

    Args:
        result: the :class:`~bifta_plugin.descriptions.DescriptionSet` that
            ``generate_descriptions`` returned.
    """
    provenance = result.provenance
    return dict(
        output_path=provenance.get("path"),
        classes=list(result.classes),
        num_descriptions=sum(len(v) for v in result.descriptions.values()),
        generated_classes=list(provenance.get("generated_classes") or []),
        missing_classes=result.missing_classes(),
        model=provenance.get("model"),
        base_url=provenance.get("base_url"),
        requests=provenance.get("requests"),
        summary=result.summary(),
    )


def generation_markdown(results: dict) -> str:
    """A short markdown report of :func:`generation_results`."""
    classes = results.get("classes") or []
    generated = results.get("generated_classes") or []
    lines = [f"**Descriptions file:** `{results.get('output_path')}`"]
    lines.append(
        f"- Classes: {len(classes)} ({len(generated)} generated now, "
        f"{len(classes) - len(generated)} already in the file)"
    )
    lines.append(f"- Descriptions: {results.get('num_descriptions', 0)}")
    if results.get("model") and generated:
        lines.append(
            f"- Model: `{results['model']}` at `{results.get('base_url')}`"
        )
    missing = results.get("missing_classes") or []
    if missing:
        lines.append(
            f"- **Missing:** {len(missing)} classes got no usable sentence: "
            f"{preview(missing)} (re-run to retry them)"
        )
    if generated:
        lines.append(f"- Generated: {preview(generated)}")
    return "\n".join(lines)
