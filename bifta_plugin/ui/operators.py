"""Operators of the ``@bifta/bifta`` plugin: thin shells over the SDK.

- ``run_bifta`` wraps :func:`bifta_plugin.api.run_bifta`; its param names
  are the SDK's keyword names, so every form has an equivalent SDK call;
- ``get_bifta_run_info`` / ``delete_bifta_run`` wrap
  :mod:`bifta_plugin.runs`.

This module imports FiftyOne and :mod:`bifta_plugin.config` (stdlib only),
never torch: the engine is imported inside ``execute``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import config as bifta_config
from . import _common as ui

logger = logging.getLogger(__name__)

ICON = "/assets/icon.svg"

METHOD_LABELS = {
    "bifta": "BiFTA: crops + refined descriptions (recommended)",
    "wca": "WCA: crops + descriptions",
    "descriptions": "Descriptions only (CuPL style, no crops)",
    "ensemble": "Prompt ensemble (templates, no descriptions)",
    "clip": "Plain CLIP ('a photo of a {}.')",
}
FALLBACK_METHOD = "ensemble"
CLASSES_SOURCES = {
    "list": "Type the classes",
    "file": "Classes file (.txt one per line, or a JSON list)",
    "field": "Labels of an existing Classification field",
}
DESCRIPTIONS_FORMATS = ("auto", "cupl", "dclip", "templates")
CROP_MODES = ("auto", "exact", "fast")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps")

#: config fields editable in the form's advanced section: (name, kind, label)
ADVANCED_CONFIG = (
    ("num_candidates", "int", "Crops drawn per image"),
    ("max_views", "int", "Max crops kept per image"),
    ("iou_threshold", "float", "Crop IoU filter threshold (0-1)"),
    ("desc_sim_threshold", "float", "Description similarity threshold (0-1)"),
    ("max_descriptions", "int", "Max descriptions kept per class"),
    ("seed", "int", "Seed of the crop boxes"),
)
#: params of the advanced section (SDK calls may pass them directly)
ADVANCED_PARAMS = tuple(n for n, _, _ in ADVANCED_CONFIG) + (
    "crop_mode",
    "precision",
    "num_workers",
    "run_key",
)
#: every BiftaConfig field a caller may override (SDK params and CLI)
CONFIG_OVERRIDES = tuple(
    f.name
    for f in dataclasses.fields(bifta_config.BiftaConfig)
    if f.name != "method"
)
#: run_bifta keywords passed through unchanged when present in the params
PASSTHROUGH = (
    "label_field",
    "model_name",
    "pretrained",
    "device",
    "precision",
    "batch_size",
    "num_workers",
    "crop_mode",
    "descriptions_format",
    "skip_existing",
    "skip_failures",
    "overwrite",
    "gt_field",
    "eval_key",
    "run_key",
    "max_class_fields",
    "top_k",
)


# ============================================================================
# run_bifta
# ============================================================================
class RunBifta(foo.Operator):
    """Zero-shot classification of the target samples with BiFTA / WCA."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="run_bifta",
            label="BiFTA: zero-shot classify",
            description=(
                "Zero-shot CLIP classification with crops and class "
                "descriptions (BiFTA / WCA)"
            ),
            icon=ICON,
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(
                label="BiFTA zero-shot classify", icon=ICON, prompt=True
            ),
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _run_bifta_inputs(ctx, inputs)
        return types.Property(
            inputs, view=types.View(label="BiFTA zero-shot classification")
        )

    def resolve_run_name(self, ctx):
        method = ctx.params.get("method") or "bifta"
        label_field = ctx.params.get("label_field") or "bifta"
        return f"BiFTA ({method}) -> {label_field}"

    def execute(self, ctx):
        request = build_run_request(ctx.params)
        if ctx.delegated:
            return _execute_delegated(ctx, request)
        return _execute_streaming(ctx, request)

    def resolve_output(self, ctx):
        return _summary_outputs(ctx.results or {})

    def __call__(
        self,
        sample_collection,
        classes=None,
        descriptions_path=None,
        method="bifta",
        label_field="bifta",
        *,
        classes_path=None,
        classes_field=None,
        descriptions_format="auto",
        model_name="ViT-B-32",
        pretrained="openai",
        device="auto",
        precision="auto",
        batch_size=16,
        num_workers=None,
        crop_mode="auto",
        gt_field=None,
        eval_key=None,
        run_key=None,
        skip_existing=False,
        overwrite=False,
        skip_failures=True,
        delegate=False,
        delegation_target=None,
        **config_overrides,
    ):
        """Run the operator from Python (immediately, or queued for delegation).

        The same parameters as :func:`bifta_plugin.api.run_bifta`, which is
        the primary SDK entry point (no operator timeout, returns a
        ``RunResult``); this wrapper exists to *queue* runs for a delegated
        orchestrator from Python, or to run exactly what the App runs.

        Example::

            import fiftyone.operators as foo

            op = foo.get_operator("@bifta/bifta/run_bifta")

            # immediately (inside FIFTYONE_OPERATOR_TIMEOUT, 600 s default)
            res = op(dataset, classes=["cat", "dog"],
                     descriptions_path="/path/descriptions.json",
                     gt_field="ground_truth")
            print(res.result["accuracy"])

            # queued; run with `fiftyone delegated launch`
            res = op(dataset.take(1000), classes_field="ground_truth",
                     method="wca", delegate=True)
            print(res.result["id"])

        Args:
            sample_collection: a dataset or view to classify.
            classes: class names (list, or a comma-separated string); or use
                ``classes_path`` / ``classes_field``.
            descriptions_path: a descriptions file (JSON/YAML/txt). Without
                one, the description methods fall back to "ensemble" (noted
                in the result's ``fallback``).
            method: "bifta", "wca", "descriptions", "ensemble" or "clip".
            label_field: the ``fo.Classification`` field to write.
            classes_path: a class list file (txt, one per line, or JSON list).
            classes_field: use the labels of this Classification field.
            descriptions_format: "auto", "cupl", "dclip" or "templates".
            model_name, pretrained: the open_clip model and weights
                (``pretrained="none"`` for random weights).
            device, precision, batch_size, num_workers, crop_mode: runtime.
            gt_field: a Classification field to evaluate against.
            eval_key: the evaluation key (default chosen by the SDK).
            run_key: the run key (default: ``label_field``).
            skip_existing, overwrite, skip_failures: see the SDK.
            delegate: queue the run for delegated execution.
            delegation_target: an optional orchestrator.
            **config_overrides: method settings such as ``num_candidates``,
                ``max_views``, ``iou_threshold``, ``desc_sim_threshold``,
                ``max_descriptions``, ``seed``.

        Returns:
            a ``fiftyone.operators.executor.ExecutionResult``: ``.result``
            is the run summary dict when run immediately, or the queued
            operation (``.result["id"]``) when delegated.
        """
        unknown = sorted(set(config_overrides) - set(CONFIG_OVERRIDES))
        if unknown:
            raise TypeError(f"unknown parameter(s) {unknown}")
        params = dict(
            classes=classes,
            classes_path=classes_path,
            classes_field=classes_field,
            classes_source=_classes_source(
                classes, classes_path, classes_field
            ),
            descriptions_path=descriptions_path,
            descriptions_format=descriptions_format,
            method=method,
            label_field=label_field,
            model_name=model_name,
            pretrained="none" if pretrained is None else str(pretrained),
            device=device,
            precision=precision,
            batch_size=batch_size,
            num_workers=num_workers,
            crop_mode=crop_mode,
            gt_field=gt_field,
            eval_key=eval_key,
            run_key=run_key,
            skip_existing=skip_existing,
            overwrite=overwrite,
            skip_failures=skip_failures,
            **config_overrides,
        )
        params = {k: v for k, v in params.items() if v is not None}
        for name in ("descriptions_path", "classes_path"):
            if isinstance(params.get(name), os.PathLike):
                params[name] = os.fspath(params[name])
        if isinstance(sample_collection, fo.Dataset):
            ctx = dict(dataset=sample_collection)
        else:
            ctx = dict(view=sample_collection)
        result = foo.execute_operator(
            self.uri,
            ctx,
            params=params,
            request_delegation=delegate,
            delegation_target=delegation_target,
        )
        if not delegate and result.result is None:
            result.result = streamed_results(result)
        return result


def _classes_source(classes, classes_path, classes_field) -> str:
    given = [
        name
        for name, value in (
            ("list", classes),
            ("file", classes_path),
            ("field", classes_field),
        )
        if value
    ]
    if len(given) > 1:
        raise ValueError(
            "pass only one of classes, classes_path and classes_field"
        )
    if not given:
        raise ValueError("pass classes, classes_path or classes_field")
    return given[0]


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


# ----------------------------------------------------------------------------
# run_bifta: the form
# ----------------------------------------------------------------------------
def _run_bifta_inputs(ctx, inputs) -> bool:
    """Build the form; returns whether it is ready to execute."""
    inputs.view_target(ctx, action_description="Classify")
    ready = _classes_inputs(ctx, inputs)
    method = _method_inputs(ctx, inputs)
    ready &= _descriptions_inputs(ctx, inputs, method)
    ready &= _model_inputs(ctx, inputs)
    ready &= _label_field_inputs(ctx, inputs)
    ready &= _evaluation_inputs(ctx, inputs)
    ready &= _advanced_inputs(ctx, inputs, method)
    return ready


def _classes_inputs(ctx, inputs) -> bool:
    source = ctx.params.get("classes_source") or "list"
    ui.radio(
        inputs,
        "classes_source",
        CLASSES_SOURCES,
        label="Classes",
        default="list",
        description="Where the class names come from",
    )
    if source == "file":
        return _classes_file_inputs(ctx, inputs)
    if source == "field":
        return _classes_field_inputs(ctx, inputs)
    return _classes_list_inputs(ctx, inputs)


def _classes_list_inputs(ctx, inputs) -> bool:
    value = ctx.params.get("classes")
    kwargs = dict(
        label="Class names",
        description="The classes to choose from (type a name, press Enter)",
        required=True,
    )
    if isinstance(value, str):  # an SDK caller's "a, b, c"
        prop = inputs.str("classes", **kwargs)
    else:
        prop = inputs.list(
            "classes",
            types.String(),
            view=types.AutocompleteView(
                allow_user_input=True, allow_duplicates=False
            ),
            **kwargs,
        )
    classes = split_classes(value)
    if value is not None and not classes:
        ui.set_invalid(prop, "Enter at least one class name")
        return False
    if len(set(classes)) < len(classes):
        ui.warning(inputs, "classes_dupes", "Some class names are repeated")
    return bool(classes)


def _classes_file_inputs(ctx, inputs) -> bool:
    prop = ui.path_input(
        ctx,
        inputs,
        "classes_path",
        label="Classes file",
        description="A .txt file (one class per line) or a JSON list",
        required=True,
    )
    path = ui.parse_path(ctx.params.get("classes_path"))
    if path is None:
        return False
    try:
        classes = ui.read_list_file(path)
    except (ValueError, OSError) as e:
        ui.set_invalid(prop, str(e))
        return False
    ui.notice(
        inputs,
        "classes_path_info",
        f"{len(classes)} classes: {_preview(classes)}",
    )
    return True


def _classes_field_inputs(ctx, inputs) -> bool:
    fields = ui.classification_fields(ctx.dataset)
    prop = ui.field_dropdown(
        inputs,
        "classes_field",
        fields,
        label="Classes field",
        description="Classify into the labels that occur in this field",
        required=True,
    )
    if prop is None:
        ui.error(
            inputs,
            "classes_field_none",
            "This dataset has no Classification field: type the classes or "
            "choose a file instead",
        )
        ui.set_invalid(inputs.get_property("classes_source"), "No field")
        return False
    field = ctx.params.get("classes_field")
    if field not in fields:
        return False
    classes = ui.distinct_labels(ctx.dataset, field)
    if not classes:
        ui.set_invalid(prop, f"Field '{field}' has no labels")
        return False
    ui.notice(
        inputs,
        "classes_field_info",
        f"{len(classes)} classes: {_preview(classes)}",
    )
    return True


def _method_inputs(ctx, inputs) -> str:
    ui.radio(
        inputs,
        "method",
        METHOD_LABELS,
        label="Method",
        default="bifta",
        dropdown=True,
    )
    method = ctx.params.get("method") or "bifta"
    return method if method in METHOD_LABELS else "bifta"


def _descriptions_inputs(ctx, inputs, method: str) -> bool:
    prop = ui.path_input(
        ctx,
        inputs,
        "descriptions_path",
        label="Class descriptions",
        description=(
            "A JSON/YAML file {class: [sentences]} (CuPL / WCA style), or "
            "templates; used by bifta, wca and descriptions"
        ),
    )
    path = ui.parse_path(ctx.params.get("descriptions_path"))
    needs = method in bifta_config.DESCRIPTION_METHODS
    if path is None:
        if needs:
            ui.notice(inputs, "descriptions_fallback", fallback_note(method))
        return True
    if not needs:
        ui.notice(
            inputs,
            "descriptions_unused",
            f"Method '{method}' does not use descriptions; the file is ignored",
        )
    if not _is_file(path):
        ui.set_invalid(prop, f"Descriptions file not found: {path}")
        return False
    ui.radio(
        inputs,
        "descriptions_format",
        {f: f for f in DESCRIPTIONS_FORMATS},
        label="Descriptions format",
        default="auto",
        description="auto: a list = templates, an object = CuPL sentences; "
        "pick dclip for short DCLIP descriptors",
        dropdown=True,
    )
    return True


def _model_inputs(ctx, inputs) -> bool:
    ready = _text_input(
        ctx,
        inputs,
        "model_name",
        "ViT-B-32",
        label="Model",
        description="An open_clip model name (ViT-B-32, ViT-L-14, "
        "hf-hub:org/repo, ...)",
    )
    ready &= _text_input(
        ctx,
        inputs,
        "pretrained",
        "openai",
        label="Pretrained weights",
        description="An open_clip tag (openai, laion2b_s34b_b79k, ...) or a "
        "checkpoint path; 'none' = random weights (tests only)",
    )
    if str(ctx.params.get("pretrained")).strip().lower() in ("none", "random"):
        ui.warning(
            inputs,
            "random_weights",
            "Random weights: predictions are meaningless (code paths only)",
        )
    device = inputs.str(
        "device",
        default="auto",
        label="Device",
        description="auto, cpu, cuda, cuda:N or mps",
        view=types.AutocompleteView(
            choices=[types.Choice(d, label=d) for d in DEVICES],
            allow_user_input=True,
        ),
    )
    message = ui.device_error(ctx.params.get("device"))
    if message:
        ui.set_invalid(device, message)
    inputs.int(
        "batch_size",
        default=16,
        min=1,
        label="Batch size",
        description="Images per step (each image is ~100 crops for "
        "bifta/wca)",
    )
    return ready and message is None


def _text_input(ctx, inputs, name, default, **kwargs) -> bool:
    """A string input with a default; blank is invalid, absent = default."""
    prop = inputs.str(name, default=default, **kwargs)
    value = ctx.params.get(name)
    if value is not None and not str(value).strip():
        ui.set_invalid(prop, f"Enter a value (default: {default})")
        return False
    return True


def _label_field_inputs(ctx, inputs) -> bool:
    prop = inputs.str(
        "label_field",
        default="bifta",
        label="Label field",
        description="The fo.Classification field to write (plus "
        "<field>_crops, _scores/_topk, _error)",
    )
    name = ctx.params.get("label_field", "bifta")
    message = ui.field_name_error(name)
    if message:
        ui.set_invalid(prop, message)
        return False
    state = _label_field_state(ctx.dataset, name)
    if state == "free":
        return True
    if state != "bifta":
        ui.set_invalid(prop, state)
        return False
    ui.warning(
        inputs,
        "label_field_exists",
        f"'{name}' holds an earlier BiFTA run: overwrite it, or only "
        "classify the samples that have no prediction yet",
    )
    inputs.bool("overwrite", default=False, label="Overwrite the earlier run")
    inputs.bool(
        "skip_existing",
        default=False,
        label="Skip samples that already have a prediction",
    )
    return True


def _label_field_state(dataset, name: str) -> str:
    """ "free", "bifta" (an earlier BiFTA run's field) or why it is taken."""
    schema = dataset.get_field_schema()
    taken = [
        n
        for n in [name, *(name + s for s in ui.DERIVED_SUFFIXES)]
        if n in schema
    ]
    if not taken:
        return "free"
    if name in ui.bifta_label_fields(dataset):
        return "bifta"
    return (
        f"Field '{taken[0]}' already exists and was not written by BiFTA; "
        "choose another label field"
    )


def _evaluation_inputs(ctx, inputs) -> bool:
    label_field = ctx.params.get("label_field", "bifta")
    fields = [
        f for f in ui.classification_fields(ctx.dataset) if f != label_field
    ]
    prop = ui.field_dropdown(
        inputs,
        "gt_field",
        fields,
        label="Ground truth (optional)",
        description="Evaluate the predictions against this field",
    )
    if prop is None or not ctx.params.get("gt_field"):
        return True
    key = inputs.str(
        "eval_key",
        label="Evaluation key",
        description="Default: eval_<run key>",
    )
    eval_key = ctx.params.get("eval_key")
    if eval_key and not str(eval_key).isidentifier():
        ui.set_invalid(key, f"'{eval_key}' is not a valid evaluation key")
        return False
    return True


def _advanced_inputs(ctx, inputs, method: str) -> bool:
    inputs.bool("advanced", default=False, label="Advanced settings")
    if "advanced" in ctx.params:  # the App's form
        if not ctx.params["advanced"]:
            return True
    elif not any(ctx.params.get(n) is not None for n in ADVANCED_PARAMS):
        return True  # an SDK call without advanced settings
    defaults = bifta_config.get_config(method)
    ready = True
    for name, kind, label in ADVANCED_CONFIG:
        if not _applies(name, defaults):
            continue
        define = inputs.int if kind == "int" else inputs.float
        prop = define(
            name,
            label=label,
            description=f"Default: {getattr(defaults, name)}",
        )
        message = config_error(method, name, ctx.params.get(name))
        if message:
            ui.set_invalid(prop, message)
            ready = False
    for name, values in (("crop_mode", CROP_MODES), ("precision", PRECISIONS)):
        ui.radio(
            inputs,
            name,
            {v: v for v in values},
            label=name.replace("_", " ").capitalize(),
            default="auto",
            dropdown=True,
        )
    inputs.int(
        "num_workers",
        min=0,
        label="Decode workers",
        description="Delegated runs only (immediate runs use 0)",
    )
    run_key = inputs.str(
        "run_key", label="Run key", description="Default: the label field"
    )
    value = ctx.params.get("run_key")
    if value and not str(value).isidentifier():
        ui.set_invalid(run_key, f"'{value}' is not a valid run key")
        ready = False
    return ready


def _applies(name: str, defaults) -> bool:
    if name in ("desc_sim_threshold", "max_descriptions"):
        return defaults.method == "bifta"
    if name in ("num_candidates", "max_views", "iou_threshold", "seed"):
        return defaults.uses_crops
    return True


def config_error(method: str, name: str, value) -> str | None:
    """The engine's validation message for one override, or None if valid."""
    if value is None or value == "":
        return None
    try:
        bifta_config.get_config(method, **{name: value})
    except ValueError as e:
        return str(e)
    return None


def fallback_note(method: str) -> str:
    return (
        f"No descriptions file: method '{method}' needs class descriptions, "
        f"so the prompt ensemble ('{FALLBACK_METHOD}', templates) will run "
        "instead. Choose a descriptions file to use "
        f"'{method}'."
    )


# ----------------------------------------------------------------------------
# run_bifta: params -> SDK call
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class RunRequest:
    """What ``execute`` passes to ``api.run_bifta`` plus notes for the output.

    Attributes:
        kwargs: keyword arguments of ``run_bifta`` (except samples/progress).
        method_requested: the method the user asked for.
        fallback: why another method ran, or None.
    """

    kwargs: dict
    method_requested: str
    fallback: str | None = None


def build_run_request(params: dict) -> RunRequest:
    """Turn operator params into ``run_bifta`` keywords (same names).

    Raises:
        ValueError: no classes, or an unreadable classes file.
    """
    method = params.get("method") or "bifta"
    kwargs = {
        name: params[name]
        for name in PASSTHROUGH
        if params.get(name) is not None and params.get(name) != ""
    }
    kwargs.update(_classes_kwargs(params))
    path = ui.parse_path(params.get("descriptions_path"))
    fallback = None
    if method in bifta_config.DESCRIPTION_METHODS and path is None:
        fallback = fallback_note(method)
        kwargs["method"] = FALLBACK_METHOD
    else:
        kwargs["method"] = method
        if path is not None and method in bifta_config.DESCRIPTION_METHODS:
            kwargs["descriptions"] = path
    for name in CONFIG_OVERRIDES:  # any method accepts any config field
        value = params.get(name)
        if value is not None and value != "":
            kwargs[name] = value
    if kwargs.get("pretrained") in ("none", "None", "random"):
        kwargs["pretrained"] = None
    return RunRequest(kwargs, method_requested=method, fallback=fallback)


def _classes_kwargs(params: dict) -> dict:
    source = params.get("classes_source") or "list"
    if source == "field":
        field = params.get("classes_field")
        if not field:
            raise ValueError("classes_source is 'field' but no classes_field")
        return {"classes_field": field}
    if source == "file":
        path = ui.parse_path(params.get("classes_path"))
        if path is None:
            raise ValueError("classes_source is 'file' but no classes_path")
        return {"classes": ui.read_list_file(path)}
    classes = split_classes(params.get("classes"))
    if not classes:
        raise ValueError("no classes given")
    return {"classes": classes}


def split_classes(value) -> list[str]:
    """Class names from a list, or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [str(c).strip() for c in value if str(c).strip()]


# ----------------------------------------------------------------------------
# run_bifta: execution
# ----------------------------------------------------------------------------
class RunCancelled(Exception):
    """The App closed the stream of an immediate run."""


class _Progress:
    """A progress callable for ``run_bifta`` -> ``emit(fraction, label)``.

    Accepts ``progress(done, total)`` and FiftyOne-style ``progress(pb)``
    (an object with ``.progress``). Emits at most every ``min_interval``
    seconds, always the final 100 %.
    """

    def __init__(self, emit: Callable, min_interval: float = 0.0, cancel=None):
        self.emit = emit
        self.min_interval = min_interval
        self.cancel = cancel
        self._last = 0.0

    def __call__(self, *args, **kwargs):
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled("the App closed the operation")
        fraction, label = _progress_args(args, kwargs)
        if fraction is None:
            return
        now = time.monotonic()
        if fraction < 1 and now - self._last < self.min_interval:
            return
        self._last = now
        self.emit(fraction, label)


def _progress_args(args, kwargs):
    if "done" in kwargs and "total" in kwargs:
        args = (kwargs["done"], kwargs["total"])
    if len(args) >= 2 and all(isinstance(a, (int, float)) for a in args[:2]):
        done, total = args[:2]
        fraction = min(1.0, done / total) if total else 1.0
        return fraction, f"{done}/{total} samples"
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
                return float(fraction), f"{done}/{total} samples"
            return float(fraction), f"{100 * float(fraction):.0f}%"
    return None, None


def _call_run_bifta(samples, request: RunRequest, progress) -> dict:
    from .. import api  # the engine: torch, open_clip

    result = api.run_bifta(samples, progress=progress, **request.kwargs)
    return _output(result, request)


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
    return _jsonable(out)


def _execute_delegated(ctx, request: RunRequest) -> dict:
    samples = ctx.target_view()
    progress = _Progress(
        lambda fraction, label: ctx.set_progress(
            progress=fraction, label=label
        ),
        min_interval=5.0,
    )
    return _call_run_bifta(samples, request, progress)


def _execute_streaming(ctx, request: RunRequest):
    """Immediate run: the SDK call runs in a worker thread while this
    generator streams its progress to the App."""
    samples = ctx.target_view()
    request.kwargs["num_workers"] = 0  # no DataLoader processes in the App
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    progress = _Progress(
        lambda f, label: events.put(
            ("progress", dict(progress=f, label=label))
        ),
        min_interval=0.5,
        cancel=cancel,
    )

    def work():
        try:
            events.put(("done", _call_run_bifta(samples, request, progress)))
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
    yield ctx.ops.show_output(_summary_outputs(output).to_json(), output)


# ----------------------------------------------------------------------------
# run_bifta: the output
# ----------------------------------------------------------------------------
def _summary_outputs(results: dict) -> types.Property:
    outputs = types.Object()
    outputs.md(summary_markdown(results), name="summary_md")
    return types.Property(outputs, view=types.View(label="BiFTA run"))


def summary_markdown(results: dict) -> str:
    """A short markdown report of a run's results dict."""
    lines = []
    if results.get("fallback"):
        lines.append(f"> **Note:** {results['fallback']}\n")
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
    if results.get("num_failed"):
        lines.append(f"- Failures are in `{label_field}_error`")
    return "\n".join(lines)


def _jsonable(value: Any):
    """Recursively turn numpy scalars/arrays, tuples and paths into JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ============================================================================
# get_bifta_run_info / delete_bifta_run
# ============================================================================
def _run_key_input(ctx, inputs, action: str) -> str | None:
    """A dropdown of the dataset's BiFTA runs; returns the chosen key."""
    from .. import runs

    run_keys = list(runs.list_bifta_runs(ctx.dataset))
    if not run_keys:
        ui.warning(inputs, "no_runs", "This dataset has no BiFTA runs")
        prop = inputs.str("run_key", required=True, label="Run key")
        ui.set_invalid(prop, "This dataset has no BiFTA runs")
        return None
    ui.field_dropdown(
        inputs,
        "run_key",
        run_keys,
        label="BiFTA run",
        description=f"The run to {action}",
        required=True,
    )
    key = ctx.params.get("run_key")
    return key if key in run_keys else None


class GetBiftaRunInfo(foo.Operator):
    """Shows the provenance of a BiFTA run."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="get_bifta_run_info",
            label="BiFTA: get run info",
            description="Show the settings and provenance of a BiFTA run",
            icon=ICON,
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _run_key_input(ctx, inputs, "inspect")
        return types.Property(inputs, view=types.View(label="BiFTA run info"))

    def execute(self, ctx):
        from .. import runs

        run_key = ctx.params["run_key"]
        info = runs.get_bifta_run_info(ctx.dataset, run_key)
        if hasattr(info, "to_dict"):
            info = info.to_dict()
        return {"run_key": run_key, "info": _jsonable(info)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("run_key", label="Run key")
        outputs.obj("info", label="Run info", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="BiFTA run info"))


class DeleteBiftaRun(foo.Operator):
    """Deletes a BiFTA run and the fields it wrote."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="delete_bifta_run",
            label="BiFTA: delete run",
            description="Delete a BiFTA run and the fields it wrote",
            icon=ICON,
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key = _run_key_input(ctx, inputs, "delete")
        if run_key is not None:
            fields = ui.bifta_run_fields(ctx.dataset, run_key)
            ui.warning(
                inputs,
                "delete_warning",
                f"This deletes run '{run_key}' and its fields: "
                f"{', '.join(fields) or '(none)'}",
            )
        return types.Property(
            inputs, view=types.View(label="Delete BiFTA run")
        )

    def execute(self, ctx):
        from .. import runs

        run_key = ctx.params["run_key"]
        deleted = runs.delete_bifta_run(
            ctx.dataset, run_key, delete_fields=True
        )
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        return {"run_key": run_key, "deleted_fields": list(deleted)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("run_key", label="Deleted run")
        outputs.list("deleted_fields", types.String(), label="Deleted fields")
        return types.Property(outputs, view=types.View(label="Deleted"))


def _preview(items, limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (
        f", ... (+{len(items) - limit})" if len(items) > limit else ""
    )


def _is_file(path: str) -> bool:
    return os.path.isfile(path)
