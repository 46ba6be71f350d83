"""``run_bifta`` execution: params -> SDK call, progress, output.

``build_run_request`` maps the form's params to flat
:func:`bifta_plugin.sdk.run.iter_bifta` settings (keyword and option-group
attribute names, grouped by :func:`~bifta_plugin.sdk.options.split_options`),
plus, when asked, a description-generation step that runs first
(:func:`~bifta_plugin.descriptions.generation.iter_generate_before_run` on
the classes the file lacks). Both are iterators of progress events
(:mod:`.progress`): immediate runs yield them to the App from a generator
``execute``, delegated runs report them through ``ctx.set_progress``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Iterator

import fiftyone.operators.types as types

from ..core import defaults
from ..core.methods import descriptions_needed_error, get_method
from ..core.progress import ProgressEvent
from ..sdk.rules import field_classes
from . import _common as ui
from . import llm
from .classes_form import classes_kwargs
from .params import sdk_kwargs
from .progress import progress_params, report_to_ctx, throttled
from .run_form import LLM_PREFIX

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
    """What ``execute`` passes to ``iter_bifta`` plus notes for the output.

    Attributes:
        kwargs: ``iter_bifta`` settings, flat (except samples); grouped by
            :func:`~bifta_plugin.sdk.options.split_options` at the call.
        generate: descriptions to generate first, or None.
    """

    kwargs: dict
    generate: GenerationStep | None = None


#: run settings a queued shard (or an SDK call) passes besides the form's params
SHARD_PARAMS = ("shard", "take_over", "model_config")


def build_run_request(params: dict) -> RunRequest:
    """Turn operator params into ``run_bifta`` keywords (same names, read
    through :data:`.params.RUN_PARAMS`).

    Raises:
        ValueError: no classes, an unreadable classes file, a description
            method without a descriptions file (no other method runs
            instead), or a ``generate_missing`` request without a ``.json``
            file to write.
    """
    method = params.get("method") or defaults.METHOD
    kwargs = sdk_kwargs(params)
    for name in SHARD_PARAMS:  # set by queued shards and SDK calls, not in the form
        if params.get(name) is not None:
            kwargs[name] = params[name]
    kwargs.update(classes_kwargs(params))
    kwargs["method"] = method
    path = ui.parse_path(params.get("descriptions_path"))
    uses_descriptions = get_method(method).uses_descriptions
    generate = None
    if uses_descriptions and params.get("generate_missing"):
        generate = _generation_step(params, path)
    if uses_descriptions:
        if path is None:
            raise ValueError(descriptions_needed_error(method))
        kwargs["descriptions"] = path
    return RunRequest(kwargs, generate=generate)


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
    """Replace ``classes_field`` by the field's labels over the whole dataset
    (:func:`~bifta_plugin.sdk.rules.field_classes`, as the SDK resolves
    it), so that generation before the run sees the same classes.

    Raises:
        ValueError: the field has no labels.
    """
    field = request.kwargs.pop("classes_field", None)
    if field is not None:  # the SDK's rule: the whole dataset's labels
        request.kwargs["classes"] = field_classes(dataset, field)


# ----------------------------------------------------------------------------
# run_bifta: execution
# ----------------------------------------------------------------------------
def run_events(samples, request: RunRequest, secrets=None) -> Iterator[ProgressEvent]:
    """The whole operation as one stream of progress events: description
    generation (if asked), then :func:`~bifta_plugin.sdk.run.iter_bifta`;
    the final event's ``result`` is the output dict.

    Closing it cancels whichever step is running (the run is recorded as
    "interrupted"; generated classes stay saved).
    """
    generated = None
    if request.generate is not None:
        with contextlib.closing(_generation_events(request, secrets)) as events:
            for event in events:
                if event.is_final:
                    generated = llm.generation_results(event.result)
                else:
                    yield event
    from ..sdk import run as api  # the engine: torch, open_clip
    from ..sdk.options import split_options

    with contextlib.closing(api.iter_bifta(samples, **split_options(request.kwargs))) as events:
        for event in events:
            if not event.is_final:
                yield event
                continue
            out = _output(event.result, request)
            out["generation"] = generated
            yield dataclasses.replace(event, result=out)


def _generation_events(request: RunRequest, secrets=None) -> Iterator[ProgressEvent]:
    """Complete the request's descriptions file with the LLM
    (:func:`~bifta_plugin.descriptions.generation.iter_generate_before_run`:
    a class still without description afterwards is an error, and nothing
    is classified); events labelled in description prompts.

    ``secrets`` is a plain mapping of endpoint secrets
    (:func:`~bifta_plugin.descriptions.llm_client.endpoint_secrets`).
    """
    from ..descriptions.generation import iter_generate_before_run  # stdlib HTTP

    step = request.generate
    events = iter_generate_before_run(
        request.kwargs["classes"], step.output_path, secrets=secrets, **step.settings
    )
    with contextlib.closing(events):
        for event in events:
            if not event.is_final:
                event = dataclasses.replace(
                    event, message=f"{event.done}/{event.total} description prompts"
                )
            yield event


def _output(result, request: RunRequest) -> dict:
    out = dict(result.to_dict())
    out["summary"] = result.summary()
    return jsonable(out)


def execute(ctx):
    """``RunBifta.execute``: the summary dict (delegated) or a generator
    streaming progress then the summary (immediate)."""
    num_shards = ctx.params.get("num_shards") or 1
    if num_shards > 1 and ctx.params.get("shard") is None:
        return _queue_shards(ctx, num_shards)
    request = build_run_request(ctx.params)
    resolve_field_classes(request, ctx.dataset)
    secrets = None
    if request.generate is not None:
        from ..descriptions.llm_client import endpoint_secrets

        # read here: ctx.secrets resolves through the operator's context
        secrets = endpoint_secrets(ctx.secrets)
    if ctx.delegated:
        return report_to_ctx(ctx, run_events(ctx.target_view(), request, secrets), 5.0)
    return _execute_streaming(ctx, request, secrets)


def _queue_shards(ctx, num_shards: int):
    """Queue the run as ``num_shards`` delegated operations of this
    operator, one per shard (:func:`~bifta_plugin.sdk.shards.queue_shard_operations`);
    the summary names them."""
    from ..sdk.shards import queue_shard_operations  # no torch

    params = ctx.params
    run_key = params.get("run_key") or params.get("label_field") or "bifta"
    ids = queue_shard_operations(
        ctx.dataset, run_key, dict(ctx.request_params), num_shards,
        operator_uri=ctx.operator_uri, take_over=bool(params.get("take_over")),
    )
    out = dict(
        run_key=run_key, label_field=params.get("label_field") or "bifta",
        method=params.get("method") or "bifta", num_shards=num_shards, queued_operations=ids,
        summary=f"queued {num_shards} shards of run {run_key!r} for delegated workers",
    )
    if ctx.delegated:
        return out

    def immediate():
        yield ctx.ops.show_output(summary_outputs(out).to_json(), out)

    return immediate()


def _execute_streaming(ctx, request: RunRequest, secrets):
    """Immediate run: a generator that yields the run's progress to the App
    between batches, then its summary. FiftyOne closes it when the App's
    client goes, which cancels the run at its next batch."""
    request.kwargs["num_workers"] = 0  # no DataLoader processes in the App
    events = throttled(run_events(ctx.target_view(), request, secrets), 0.5)
    output = None
    with contextlib.closing(events):
        for event in events:
            if event.is_final:
                output = event.result
            else:
                yield ctx.trigger("set_progress", progress_params(event))
    yield ctx.trigger("reload_dataset")
    yield ctx.ops.show_output(summary_outputs(output).to_json(), output)
    yield from restore_filters(ctx)


#: seconds after ``reload_dataset`` at which the user's sidebar filters are
#: put back. The App reloads its page asynchronously and resets the filters
#: when the reload lands, and it sends operators no signal of that (a busy
#: App with panels open took more than 3 s); setting the same filters again
#: is harmless, so they are set a few times, the later ones for a slow
#: reload. A filter the user changes within these seconds is set back.
FILTER_RESTORE_DELAYS_S = (1.0, 3.0, 6.0, 10.0)


def restore_filters(ctx, delays=FILTER_RESTORE_DELAYS_S):
    """After ``reload_dataset``: the sidebar filters the user had when the
    run started, set again (the App's reload clears them). Runs in the generator's thread, so waiting
    holds nothing but this operation's stream."""
    filters = ctx.request_params.get("filters")
    if not filters:
        return
    waited = 0.0
    for delay in delays:
        time.sleep(max(delay - waited, 0.0))
        waited = delay
        yield ctx.trigger("set_filters", params=filters)


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
    if results.get("queued_operations"):
        lines.append(f"**{results['summary']}**: {', '.join(results['queued_operations'])}")
    if results.get("generation"):
        lines.append(llm.generation_markdown(results["generation"]) + "\n")
    label_field = results.get("label_field", defaults.LABEL_FIELD)
    lines.append(f"**Method:** `{results.get('method')}` -> `{label_field}`")
    unit = results.get("unit") or "samples"
    for key, label in (
        ("num_samples", unit.capitalize()),
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
        error = (results.get("fields") or {}).get("error") or f"{label_field}_error"
        lines.append(f"- Failures are in `{error}`")
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
