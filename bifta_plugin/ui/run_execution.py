"""``run_bifta`` execution: params -> SDK call, progress, output.

``build_run_request`` maps the form's params to :func:`bifta_plugin.api.run_bifta`
keywords (same names) plus, when asked, a description-generation step that
runs first (:func:`bifta_plugin.generation.generate_descriptions` on the
classes the file lacks). Immediate runs execute in a worker thread and stream
progress to the App; delegated runs report through ``ctx.set_progress``.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable

import fiftyone.operators.types as types

from ..core import config as bifta_config
from . import _common as ui
from . import llm
from .classes_form import classes_kwargs, field_classes
from .run_form import (
    CONFIG_OVERRIDES,
    FALLBACK_METHOD,
    LLM_PREFIX,
    PASSTHROUGH,
    fallback_note,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------
# run_bifta: params -> SDK call
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class GenerationStep:
    """Descriptions to generate before the run.

    Attributes:
        output_path: the ``.json`` descriptions file to complete.
        settings: :func:`~bifta_plugin.generation.generate_descriptions`
            keywords from the form (never an API key).
    """

    output_path: str
    settings: dict


@dataclasses.dataclass
class RunRequest:
    """What ``execute`` passes to ``api.run_bifta`` plus notes for the output.

    Attributes:
        kwargs: keyword arguments of ``run_bifta`` (except samples/progress).
        method_requested: the method the user asked for.
        fallback: why another method ran, or None.
        generate: descriptions to generate first, or None.
    """

    kwargs: dict
    method_requested: str
    fallback: str | None = None
    generate: GenerationStep | None = None


def build_run_request(params: dict) -> RunRequest:
    """Turn operator params into ``run_bifta`` keywords (same names).

    Raises:
        ValueError: no classes, an unreadable classes file, or a
            ``generate_missing`` request without a ``.json`` file to write.
    """
    method = params.get("method") or "bifta"
    kwargs = {
        name: params[name]
        for name in PASSTHROUGH
        if params.get(name) is not None and params.get(name) != ""
    }
    kwargs.update(classes_kwargs(params))
    path = ui.parse_path(params.get("descriptions_path"))
    uses_descriptions = method in bifta_config.DESCRIPTION_METHODS
    generate = None
    if uses_descriptions and params.get("generate_missing"):
        generate = _generation_step(params, path)
    fallback = None
    if uses_descriptions and path is None:
        fallback = fallback_note(method)
        kwargs["method"] = FALLBACK_METHOD
    else:
        kwargs["method"] = method
        if path is not None and uses_descriptions:
            kwargs["descriptions"] = path
    for name in CONFIG_OVERRIDES:  # any method accepts any config field
        value = params.get(name)
        if value is not None and value != "":
            kwargs[name] = value
    if kwargs.get("pretrained") in ("none", "None", "random"):
        kwargs["pretrained"] = None
    return RunRequest(
        kwargs, method_requested=method, fallback=fallback, generate=generate
    )


def _generation_step(params: dict, path: str | None) -> GenerationStep:
    if path is None:
        raise ValueError(
            "generate_missing needs descriptions_path: the .json file to "
            "write the generated descriptions to"
        )
    message = llm.json_path_error(path)
    if message:
        raise ValueError(message)
    from ..descriptions.generation import check_generated_format  # pure Python

    check_generated_format(params.get("descriptions_format") or "auto")
    return GenerationStep(path, llm.generation_kwargs(params, LLM_PREFIX))


def resolve_field_classes(request: RunRequest, dataset) -> None:
    """Replace ``classes_field`` by the field's labels over the whole dataset.

    The form lists the classes of the dataset, and a run on a few selected
    samples must still choose among all of them (the SDK's ``classes_field``
    looks only at the samples it is given).

    Raises:
        ValueError: the field has no labels.
    """
    field = request.kwargs.pop("classes_field", None)
    if field is not None:
        request.kwargs["classes"] = field_classes(dataset, field)


# ----------------------------------------------------------------------------
# run_bifta: execution
# ----------------------------------------------------------------------------
class RunCancelled(Exception):
    """The App closed the stream of an immediate run."""


class Progress:
    """A progress callable -> ``emit(fraction, label)``.

    Accepts ``progress(done, total)`` and FiftyOne-style ``progress(pb)``
    (an object with ``.progress``); labels read "done/total <unit>". Emits
    at most every ``min_interval`` seconds, always the final 100 %; raises
    :class:`RunCancelled` once ``cancel`` (an Event) is set.
    """

    def __init__(
        self,
        emit: Callable,
        min_interval: float = 0.0,
        cancel=None,
        unit: str = "samples",
    ):
        self.emit = emit
        self.min_interval = min_interval
        self.cancel = cancel
        self.unit = unit
        self._last = 0.0

    def __call__(self, *args, **kwargs):
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled("the App closed the operation")
        fraction, label = _progress_args(args, kwargs, self.unit)
        if fraction is None:
            return
        now = time.monotonic()
        if fraction < 1 and now - self._last < self.min_interval:
            return
        self._last = now
        self.emit(fraction, label)


def _progress_args(args, kwargs, unit: str):
    if "done" in kwargs and "total" in kwargs:
        args = (kwargs["done"], kwargs["total"])
    if len(args) >= 2 and all(isinstance(a, (int, float)) for a in args[:2]):
        done, total = args[:2]
        fraction = min(1.0, done / total) if total else 1.0
        return fraction, f"{done}/{total} {unit}"
    if len(args) == 1:
        value = args[0]
        if isinstance(value, (int, float)):
            return float(value), f"{100 * float(value):.0f}%"
        fraction = getattr(value, "progress", None)  # FiftyOne's ProgressBar
        if isinstance(fraction, (int, float)):
            done, total = getattr(value, "iteration", None), getattr(
                value, "total", None
            )
            if isinstance(done, int) and isinstance(total, int):
                return float(fraction), f"{done}/{total} {unit}"
            return float(fraction), f"{100 * float(fraction):.0f}%"
    return None, None


def _progress_pair(emit: Callable, min_interval: float, cancel=None):
    """(generation progress, classification progress) sharing ``emit``."""
    return (
        Progress(emit, min_interval, cancel, unit="description prompts"),
        Progress(emit, min_interval, cancel, unit="samples"),
    )


def _call_run_bifta(
    samples, request: RunRequest, progress, secrets=None, generation_progress=None
) -> dict:
    """Generate missing descriptions (if asked), then run; the output dict."""
    generated = None
    if request.generate is not None:
        generated = generate_missing(request, secrets, generation_progress)

    from ..sdk import run as api  # the engine: torch, open_clip

    result = api.run_bifta(samples, progress=progress, **request.kwargs)
    out = _output(result, request)
    out["generation"] = generated
    return out


def generate_missing(request: RunRequest, secrets=None, progress=None) -> dict:
    """Complete the request's descriptions file with the LLM.

    Args:
        request: with ``generate`` set and ``kwargs["classes"]`` resolved.
        secrets: a plain mapping of endpoint secrets
            (:func:`~bifta_plugin.llm_client.endpoint_secrets`).
        progress: ``progress(done, total)`` over the prompts.

    Returns:
        the generation summary (:func:`.llm.generation_results`).

    Raises:
        ValueError: a class still has no description after generation (the
            LLM's replies had no usable sentence); nothing was classified
            (:func:`~bifta_plugin.generation.generate_before_run`).
        GenerationError: the endpoint failed; classes finished before it
            stay saved in the file.
    """
    from ..descriptions.generation import generate_before_run  # stdlib HTTP

    step = request.generate
    result = generate_before_run(
        request.kwargs["classes"],
        step.output_path,
        secrets=secrets,
        progress=progress,
        **step.settings,
    )
    return llm.generation_results(result)


def _output(result, request: RunRequest) -> dict:
    out = (
        dict(result.to_dict()) if hasattr(result, "to_dict") else dict(result)
    )
    out["method_requested"] = request.method_requested
    out["fallback"] = request.fallback
    out.setdefault("method", request.kwargs.get("method"))
    out.setdefault("label_field", request.kwargs.get("label_field", "bifta"))
    summary = result.summary() if hasattr(result, "summary") else None
    if isinstance(summary, str):
        out["summary"] = summary
    return jsonable(out)


def execute(ctx):
    """``RunBifta.execute``: the summary dict (delegated) or a generator
    streaming progress then the summary (immediate)."""
    request = build_run_request(ctx.params)
    resolve_field_classes(request, ctx.dataset)
    secrets = None
    if request.generate is not None:
        from ..descriptions.llm_client import endpoint_secrets

        # read here: ctx.secrets resolves through the operator's context
        secrets = endpoint_secrets(ctx.secrets)
    if ctx.delegated:
        return _execute_delegated(ctx, request, secrets)
    return _execute_streaming(ctx, request, secrets)


def _execute_delegated(ctx, request: RunRequest, secrets) -> dict:
    samples = ctx.target_view()
    generation_progress, progress = _progress_pair(
        lambda fraction, label: ctx.set_progress(
            progress=fraction, label=label
        ),
        min_interval=5.0,
    )
    return _call_run_bifta(
        samples, request, progress, secrets, generation_progress
    )


def _execute_streaming(ctx, request: RunRequest, secrets):
    """Immediate run: the SDK call runs in a worker thread while this
    generator streams its progress to the App."""
    samples = ctx.target_view()
    request.kwargs["num_workers"] = 0  # no DataLoader processes in the App
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    generation_progress, progress = _progress_pair(
        lambda f, label: events.put(
            ("progress", dict(progress=f, label=label))
        ),
        min_interval=0.5,
        cancel=cancel,
    )

    def work():
        try:
            output = _call_run_bifta(
                samples, request, progress, secrets, generation_progress
            )
            events.put(("done", output))
        except BaseException as e:  # re-raised in the generator
            events.put(("error", e))

    thread = threading.Thread(target=work, name="bifta-run", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = events.get()
            if kind == "progress":
                yield ctx.trigger("set_progress", payload)
            elif kind == "error":
                raise payload
            else:
                output = payload
                break
    finally:
        cancel.set()  # stops the worker at its next batch if the App left
    thread.join()
    yield ctx.trigger("reload_dataset")
    yield ctx.ops.show_output(summary_outputs(output).to_json(), output)


# ----------------------------------------------------------------------------
# run_bifta: the output
# ----------------------------------------------------------------------------
def summary_outputs(results: dict) -> types.Property:
    outputs = types.Object()
    outputs.md(summary_markdown(results), name="summary_md")
    return types.Property(outputs, view=types.View(label="BiFTA run"))


def summary_markdown(results: dict) -> str:
    """A short markdown report of a run's results dict."""
    lines = []
    if results.get("fallback"):
        lines.append(f"> **Note:** {results['fallback']}\n")
    if results.get("generation"):
        lines.append(llm.generation_markdown(results["generation"]) + "\n")
    label_field = results.get("label_field", "bifta")
    lines.append(f"**Method:** `{results.get('method')}` -> `{label_field}`")
    for key, label in (
        ("num_samples", "Samples"),
        ("num_processed", "Classified"),
        ("num_skipped", "Skipped"),
        ("num_failed", "Failed"),
    ):
        if results.get(key) is not None:
            lines.append(f"- {label}: {results[key]}")
    if results.get("accuracy") is not None:
        eval_key = results.get("eval_key")
        suffix = f" (eval key `{eval_key}`)" if eval_key else ""
        lines.append(
            f"- **Accuracy: {100 * results['accuracy']:.1f}%**{suffix}"
        )
    if results.get("descriptions_kept"):
        from ..descriptions.files import refinement_summary  # pure Python

        line = refinement_summary(results["descriptions_kept"])
        lines.append(f"- {line[0].upper() + line[1:]}")
    if results.get("num_failed"):
        lines.append(f"- Failures are in `{label_field}_error`")
    if results.get("descriptions_report"):
        lines.append("\n**Descriptions**\n")
        lines.append("```\n" + results["descriptions_report"] + "\n```")
    return "\n".join(lines)


def jsonable(value: Any):
    """Recursively turn numpy scalars/arrays, tuples and paths into JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def streamed_results(execution_result) -> dict | None:
    """The results a streamed (generator) run sent to the App.

    FiftyOne drops the return value of generator operators; ``run_bifta``
    sends its summary with a final ``show_output`` request instead, which
    is recorded by the executor.
    """
    executor = getattr(execution_result, "executor", None)
    if executor is None:
        return None
    for request in reversed(executor.to_json().get("requests", [])):
        if request.get("operator_uri", "").endswith("show_output"):
            return (request.get("params") or {}).get("results")
    return None
