"""The SDK entry point: :func:`run_bifta` classifies a FiftyOne collection.

The operator, the CLI, :class:`~bifta_plugin.model.BiftaModel` and the
panels all go through this module. One call:

1. validates every argument and the dataset's existing fields and runs
   (nothing is written if anything is wrong);
2. builds the encoder (or uses the one passed in) and one
   :class:`~bifta_plugin.pipeline.BiftaClassifier`;
3. registers a BiFTA run (:mod:`bifta_plugin.runs`) with full provenance;
4. streams predictions batch by batch and writes each batch in bulk
   (``set_values(..., key_field="id")``, one call per field), so an
   interrupted run keeps every finished batch and ``skip_existing=True``
   resumes it;
5. optionally evaluates against a ground-truth field.

Example::

    import fiftyone.zoo as foz
    from bifta_plugin import run_bifta

    dataset = foz.load_zoo_dataset("quickstart")  # any image dataset
    result = run_bifta(
        dataset,
        classes=["cat", "dog"],
        descriptions="descriptions/pets.json",
        label_field="bifta",
        gt_field="ground_truth",
    )
    print(result.summary())
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.media as fomm
import fiftyone.core.utils as fou
from fiftyone import ViewField as F
from fiftyone.core.odm.embedded_document import DynamicEmbeddedDocument

from . import __version__
from . import labels as bl
from . import runs as br
from .config import BiftaConfig, get_config
from .classnames import validate_classes
from .descriptions import DescriptionSet, load_descriptions, refinement_summary
from .pipeline import BiftaClassifier, RuntimeOptions

logger = logging.getLogger(__name__)

#: failures kept in :attr:`RunResult.failures` (all are counted)
MAX_FAILURES_KEPT = 100

# Sample fields a run may never replace, whatever ``overwrite`` says.
_PROTECTED_FIELDS = frozenset(
    ("id", "filepath", "tags", "metadata", "created_at", "last_modified_at", "frames")
)

# The type each role's field must have to be resumed into.
_ROLE_TYPES = {
    "label": fol.Classification,
    "crops": fol.Detections,
    "topk": fol.Classifications,
    "scores": DynamicEmbeddedDocument,
}

# Run parameters that must match for a run to continue under the same key.
_IDENTITY_KEYS = (
    "method",
    "label_field",
    "classes",
    "model_name",
    "pretrained",
    "config",
    "descriptions_sha256",
    "max_class_fields",
    "top_k",
)


class SampleFailedError(RuntimeError):
    """Raised by :func:`run_bifta` with ``skip_failures=False``.

    Everything processed before (the failing batch included, with the
    failure recorded in ``<label_field>_error``) has been written.

    Attributes:
        sample_id: the failing sample.
        filepath: its media path.
    """

    def __init__(self, message: str, sample_id: str, filepath: str):
        super().__init__(message)
        self.sample_id = sample_id
        self.filepath = filepath


@dataclass
class RunResult:
    """What one :func:`run_bifta` call did.

    Attributes:
        run_key: the BiFTA run's key.
        label_field: the prediction field ``L``.
        fields: role -> field name of every field written.
        method: the BiFTA method.
        num_samples: samples in the target collection.
        num_processed: samples that got a prediction in this call.
        num_skipped: samples skipped by ``skip_existing``.
        num_failed: samples that failed (message in ``L_error``).
        failures: ``(sample id, message)``, at most
            :data:`MAX_FAILURES_KEPT`.
        accuracy: accuracy against ``gt_field`` over the samples with both a
            prediction and a ground truth (None without ``gt_field``).
        num_evaluated: samples in that evaluation.
        eval_key: the evaluation key (None without ``gt_field``).
        accuracy_runs_mean, accuracy_runs_std: resample protocol only: mean
            and population std (ddof=0) of the per-run accuracies.
        elapsed_s: wall time of the whole call.
        images_per_s: images (processed or failed) per second of
            prediction time.
        crop_mode: the resolved crop mode ("exact" or "fast").
        device: where the encoder ran.
        descriptions_kept: per class ``{label, candidates, kept}``: how many
            descriptions BiFTA's refinement kept (description methods only).
        descriptions_report: what loading the descriptions did (classes
            covered, texts, duplicates, unmatched keys, merged keys, texts
            truncated by the tokenizer, generation), as lines; None for
            methods without descriptions.
    """

    run_key: str
    label_field: str
    fields: dict = field(default_factory=dict)
    method: str = ""
    num_samples: int = 0
    num_processed: int = 0
    num_skipped: int = 0
    num_failed: int = 0
    failures: list = field(default_factory=list)
    accuracy: float | None = None
    num_evaluated: int = 0
    eval_key: str | None = None
    accuracy_runs_mean: float | None = None
    accuracy_runs_std: float | None = None
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    crop_mode: str = ""
    device: str = ""
    descriptions_kept: list | None = None
    descriptions_report: str | None = None

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (failures as ``[id, message]`` lists)."""
        d = asdict(self)
        d["failures"] = [list(f) for f in self.failures]
        return d

    def summary(self) -> str:
        """One human-readable paragraph."""
        parts = [
            f"BiFTA run {self.run_key!r} ({self.method}) -> {self.label_field!r}: "
            f"{self.num_processed} processed, {self.num_skipped} skipped, "
            f"{self.num_failed} failed of {self.num_samples} samples "
            f"in {self.elapsed_s:.1f}s ({self.images_per_s:.1f} images/s, "
            f"{self.device}, crop mode {self.crop_mode})."
        ]
        if self.accuracy is not None:
            parts.append(
                f"Accuracy {self.accuracy:.4f} on {self.num_evaluated} samples "
                f"(eval key {self.eval_key!r})."
            )
        if self.accuracy_runs_mean is not None:
            parts.append(
                f"Resample protocol: {self.accuracy_runs_mean:.4f} "
                f"+/- {self.accuracy_runs_std:.4f} over runs."
            )
        if self.descriptions_kept:
            line = refinement_summary(self.descriptions_kept)
            parts.append(line[0].upper() + line[1:] + ".")
        if self.failures:
            sid, msg = self.failures[0]
            parts.append(f"First failure: sample {sid}: {msg}")
        return " ".join(parts)


@dataclass
class _Plan:
    """Everything :func:`run_bifta` resolved before touching the dataset."""

    samples: Any
    dataset: Any
    classes: list
    descriptions: DescriptionSet | None
    config: BiftaConfig
    runtime: RuntimeOptions
    label_field: str
    run_key: str
    fields: dict
    class_fields: dict | None
    top_k: int
    max_class_fields: int
    gt_field: str | None
    eval_key: str | None
    skip_existing: bool
    skip_failures: bool
    overwrite: bool
    # filled by the checks: what ``overwrite`` will remove first
    delete_fields: set = field(default_factory=set)
    delete_runs: set = field(default_factory=set)
    delete_evals: set = field(default_factory=set)


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------
def run_bifta(
    samples,
    classes: Sequence[str] | None = None,
    descriptions=None,
    *,
    label_field: str = "bifta",
    method: str = "bifta",
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 16,
    num_workers: int | None = None,
    crop_mode: str = "auto",
    classes_field: str | None = None,
    descriptions_format: str = "auto",
    skip_existing: bool = False,
    skip_failures: bool = True,
    gt_field: str | None = None,
    eval_key: str | None = None,
    run_key: str | None = None,
    max_class_fields: int = 100,
    top_k: int = 5,
    encoder=None,
    cache_dir=None,
    overwrite: bool = False,
    progress=None,
    **config_overrides,
) -> RunResult:
    """Classify every image of ``samples`` zero-shot and store the results.

    Fields written (``L`` = ``label_field``; see ``docs/ARCHITECTURE.md``):
    ``L`` (Classification with logits, ``margin``, ``score``), ``L_crops``
    (Detections, crop methods only), ``L_scores`` (one float per class, up
    to ``max_class_fields`` classes) or ``L_topk`` (Classifications, above
    it), ``L_error`` (failure message or None).

    Args:
        samples: a dataset or view of images.
        classes: class names; or use ``classes_field``.
        descriptions: for the description methods ("descriptions", "wca",
            "bifta"): a file path, a ``{class: [sentences]}`` mapping, a list
            of templates, or a :class:`~bifta_plugin.descriptions.DescriptionSet`.
            Every class needs at least one. Ignored (with a warning) by
            "clip" and "ensemble".
        label_field: the prediction field ``L``; the other fields are
            ``L_<suffix>``.
        method: "clip", "ensemble", "descriptions", "wca" or "bifta".
        model_name, pretrained, device, precision, cache_dir: the encoder
            (see :func:`bifta_plugin.encoders.create_encoder`); ignored when
            ``encoder`` is given.
        batch_size, num_workers, crop_mode: see
            :class:`~bifta_plugin.pipeline.RuntimeOptions`.
        classes_field: take the classes from this Classification field
            (its distinct labels in ``samples``, sorted).
        descriptions_format: "auto", "cupl", "dclip" or "templates".
        skip_existing: only process samples whose ``L`` and ``L_error`` are
            both empty (resume an interrupted run). To retry failures, run on
            ``samples.exists("L_error")`` without it.
        skip_failures: record a failing image in ``L_error`` and go on;
            False raises :class:`SampleFailedError` after writing the
            batch that contains it.
        gt_field: a Classification field to evaluate against
            (``evaluate_classifications``).
        eval_key: the evaluation key (default ``"eval_" + run_key``).
        run_key: the run key (default ``label_field``); a valid identifier.
        max_class_fields: write ``L_scores`` up to this many classes, else
            ``L_topk``.
        top_k: classes kept in ``L_topk``.
        encoder: a :class:`~bifta_plugin.encoders.ClipEncoder` to reuse.
        overwrite: allow replacing existing fields of these names that this
            run key did not write (they are deleted first), an existing run
            with this key but another configuration (deleted with its
            fields and evaluation), and an existing evaluation ``eval_key``.
        progress: like FiftyOne's: None uses
            ``fiftyone.config.show_progress_bars``, True/False force it, a
            callable is called with the
            :class:`fiftyone.core.utils.ProgressBar` after each batch (e.g.
            from ``fo.report_progress``).
        **config_overrides: :func:`bifta_plugin.config.get_config`
            overrides (``num_candidates=8``, ``protocol="resample"``, ...).

    Returns:
        A :class:`RunResult`.

    Raises:
        ValueError: a bad argument, or an existing field/run/evaluation that
            ``overwrite`` would be needed to replace; nothing is written.
        SampleFailedError: with ``skip_failures=False``.
    """
    start = time.perf_counter()
    plan = _make_plan(
        samples,
        classes,
        descriptions,
        label_field=label_field,
        method=method,
        batch_size=batch_size,
        num_workers=num_workers,
        crop_mode=crop_mode,
        classes_field=classes_field,
        descriptions_format=descriptions_format,
        skip_existing=skip_existing,
        skip_failures=skip_failures,
        gt_field=gt_field,
        eval_key=eval_key,
        run_key=run_key,
        max_class_fields=max_class_fields,
        top_k=top_k,
        overwrite=overwrite,
        config_overrides=config_overrides,
    )
    _check_existing(plan)

    if encoder is None:
        from .encoders import create_encoder

        encoder = create_encoder(
            model_name, pretrained, device=device, precision=precision, cache_dir=cache_dir
        )
    if plan.descriptions is not None and hasattr(encoder, "count_truncated"):
        _report_truncation(plan.descriptions, encoder)
    classifier = BiftaClassifier(
        encoder,
        plan.classes,
        plan.descriptions.descriptions if plan.descriptions is not None else None,
        config=plan.config,
        runtime=plan.runtime,
    )
    params = _run_params(plan, classifier)
    _check_run_identity(plan, params)

    _prepare_dataset(plan, params)
    result = RunResult(
        run_key=plan.run_key,
        label_field=plan.label_field,
        fields=dict(plan.fields),
        method=plan.config.method,
        num_samples=len(plan.samples),
        crop_mode=classifier.crop_mode,
        device=str(classifier.device),
        eval_key=plan.eval_key,
        descriptions_kept=params["descriptions_kept"] if plan.descriptions else None,
        descriptions_report=plan.descriptions.summary() if plan.descriptions else None,
    )
    try:
        _predict_and_write(plan, classifier, result, progress)
        if plan.gt_field is not None:
            _evaluate(plan, result)
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        _finish_run(plan, result, start, status, error=f"{type(e).__name__}: {e}")
        raise
    _finish_run(plan, result, start, "completed")
    return result


def _report_truncation(descriptions: DescriptionSet, encoder) -> None:
    """Count the texts the tokenizer will cut at its context length; the
    count goes into the description report (and the run record)."""
    truncated = descriptions.check_lengths(encoder.count_truncated)
    if truncated:
        logger.warning(
            "%d of %d descriptions exceed the text encoder's context of %s "
            "tokens and are truncated when encoded",
            truncated, descriptions.report.total, getattr(encoder, "context_length", "?"),
        )


def resolve_descriptions(
    descriptions,
    classes: Sequence[str],
    config: BiftaConfig,
    format: str = "auto",
) -> DescriptionSet | None:
    """The descriptions a method needs, checked to cover every class.

    Args:
        descriptions: a path, a mapping, a list of templates, a
            :class:`~bifta_plugin.descriptions.DescriptionSet`, or None.
        classes: the run's classes.
        config: the method config.
        format: the file format (see
            :func:`bifta_plugin.descriptions.load_descriptions`).

    Returns:
        A :class:`~bifta_plugin.descriptions.DescriptionSet` keyed by the
        exact class names, or None for methods without descriptions.

    Raises:
        ValueError: missing descriptions for a description method, a class
            without descriptions, a bad file.
    """
    if not config.uses_descriptions:
        if descriptions is not None:
            logger.warning(
                "method %r does not use class descriptions; ignoring them",
                config.method,
            )
        return None
    if descriptions is None:
        raise ValueError(
            f"method {config.method!r} needs class descriptions: pass "
            "descriptions (a file path, a {class: [sentences]} mapping or a "
            "DescriptionSet), or choose method 'clip' or 'ensemble'"
        )
    if isinstance(descriptions, DescriptionSet):
        missing = [c for c in classes if not descriptions.descriptions.get(c)]
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20])
            raise ValueError(
                f"{len(missing)} class(es) have no descriptions in "
                f"{descriptions.source}: {shown}"
            )
        return descriptions
    if not isinstance(descriptions, (str, os.PathLike, Mapping, list, tuple)):
        raise ValueError(
            "descriptions must be a file path, a {class: [sentences]} "
            "mapping, a list of templates or a DescriptionSet; got "
            f"{type(descriptions).__name__}"
        )
    return load_descriptions(descriptions, classes, format=format).require_complete()


# ----------------------------------------------------------------------------
# Validation (no writes)
# ----------------------------------------------------------------------------
def _make_plan(samples, classes, descriptions, *, config_overrides, **kw) -> _Plan:
    dataset = _check_collection(samples)
    config = get_config(kw["method"], **config_overrides)
    runtime = RuntimeOptions(
        batch_size=kw["batch_size"], num_workers=kw["num_workers"], crop_mode=kw["crop_mode"]
    )
    _check_int(kw["max_class_fields"], "max_class_fields", 0)
    _check_int(kw["top_k"], "top_k", 1)
    classes = resolve_classes(samples, classes, kw["classes_field"])
    descs = resolve_descriptions(descriptions, classes, config, kw["descriptions_format"])

    label_field = _check_field_name(kw["label_field"], "label_field")
    run_key = kw["run_key"] if kw["run_key"] is not None else label_field
    _check_key(run_key, "run_key", "pass run_key=")
    fields = _field_plan(label_field, config, len(classes), kw["max_class_fields"])
    class_fields = bl.safe_field_names(classes) if "scores" in fields else None

    gt_field, eval_key = kw["gt_field"], None
    if gt_field is not None:
        _check_classification_field(samples, gt_field, "gt_field")
        if gt_field in fields.values():
            raise ValueError(f"gt_field {gt_field!r} is one of the fields this run writes")
        eval_key = kw["eval_key"] or f"eval_{run_key}"
        _check_key(eval_key, "eval_key", "pass eval_key=")
        if eval_key in fields.values() or eval_key == gt_field:
            raise ValueError(f"eval_key {eval_key!r} collides with a field of the run")
    elif kw["eval_key"] is not None:
        raise ValueError("eval_key needs gt_field (the ground truth to evaluate against)")

    return _Plan(
        samples=samples,
        dataset=dataset,
        classes=classes,
        descriptions=descs,
        config=config,
        runtime=runtime,
        label_field=label_field,
        run_key=run_key,
        fields=fields,
        class_fields=class_fields,
        top_k=kw["top_k"],
        max_class_fields=kw["max_class_fields"],
        gt_field=gt_field,
        eval_key=eval_key,
        skip_existing=bool(kw["skip_existing"]),
        skip_failures=bool(kw["skip_failures"]),
        overwrite=bool(kw["overwrite"]),
    )


def _check_collection(samples):
    """The dataset behind ``samples``; only plain image collections."""
    if not hasattr(samples, "_dataset") or not hasattr(samples, "media_type"):
        raise ValueError(
            f"samples must be a FiftyOne dataset or view; got {type(samples).__name__}"
        )
    if samples._is_generated:
        raise ValueError(
            "samples is a generated view (patches, frames or clips); run on "
            "the images' dataset or a view of it"
        )
    if samples.media_type != fomm.IMAGE:
        hint = " (use select_group_slices() first)" if samples.media_type == fomm.GROUP else ""
        raise ValueError(
            f"run_bifta classifies images; this collection's media type is "
            f"{samples.media_type!r}{hint}"
        )
    if len(samples) == 0:
        raise ValueError("the collection is empty: there is nothing to classify")
    return samples._dataset


def _check_int(value, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_field_name(name, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string; got {name!r}")
    if name.startswith("_") or "$" in name or "." in name or name != name.strip():
        raise ValueError(
            f"invalid {what} {name!r}: field names cannot start with '_', "
            "contain '$' or '.', or have surrounding spaces"
        )
    return name


def _check_key(key, what: str, hint: str) -> None:
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(
            f"{what} {key!r} is not a valid identifier (FiftyOne run and "
            f"evaluation keys must be); {hint}a name like 'bifta_v2'"
        )


def _check_classification_field(samples, name, what: str) -> None:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a field name; got {name!r}")
    field_ = samples.get_field(name)
    if field_ is None:
        raise ValueError(f"{what} {name!r} does not exist in this collection")
    if not (
        isinstance(field_, fof.EmbeddedDocumentField)
        and field_.document_type is fol.Classification
    ):
        raise ValueError(f"{what} {name!r} must be a Classification field; got {field_}")


def resolve_classes(samples, classes=None, classes_field=None) -> list[str]:
    """The run's classes: ``classes`` checked, or the sorted distinct labels
    of the Classification field ``classes_field`` in ``samples``.

    Raises:
        ValueError: both or neither given, a bad field, no labels, bad names.
    """
    if classes is not None and classes_field is not None:
        raise ValueError("pass classes or classes_field, not both")
    if classes_field is not None:
        _check_classification_field(samples, classes_field, "classes_field")
        classes = samples.distinct(f"{classes_field}.label")
        if not classes:
            raise ValueError(f"classes_field {classes_field!r} has no labels in these samples")
    elif classes is None:
        raise ValueError(
            "pass classes (a list of class names) or classes_field (a "
            "Classification field whose labels are the classes)"
        )
    return validate_classes(classes)


def _field_plan(
    label_field: str, config: BiftaConfig, num_classes: int, max_class_fields: int
) -> dict:
    names = bl.field_names(label_field)
    roles = ["label"]
    if config.uses_crops:
        roles.append("crops")
    roles.append("scores" if num_classes <= max_class_fields else "topk")
    roles.append("error")
    return {role: names[role] for role in roles}


def _field_is_compatible(field_, role: str) -> bool:
    if role == "error":
        return isinstance(field_, fof.StringField)
    return (
        isinstance(field_, fof.EmbeddedDocumentField)
        and field_.document_type is _ROLE_TYPES[role]
    )


def _check_existing(plan: _Plan) -> None:
    """Refuse to touch anything the user did not ask to replace.

    Fills ``plan.delete_*`` with what ``overwrite=True`` will remove.
    """
    dataset, run_key = plan.dataset, plan.run_key
    own = br.is_bifta_run(dataset, run_key)
    if dataset.has_run(run_key) and not own:
        _refuse(plan, f"run key {run_key!r} is taken by a run that is not a BiFTA run")
        plan.delete_runs.add(run_key)
    own_fields = set()
    if own:
        info = br.get_bifta_run_info(dataset, run_key)
        if info.get("label_field") == plan.label_field:
            own_fields = set((info.get("fields") or {}).values())

    schema = dataset.get_field_schema()
    for role, name in plan.fields.items():
        if name not in schema:
            continue
        field_ = schema[name]
        compatible = _field_is_compatible(field_, role)
        if name in own_fields and compatible:
            continue
        if name in _PROTECTED_FIELDS or field_.read_only or name == plan.gt_field:
            raise ValueError(
                f"field {name!r} cannot be used by a BiFTA run; choose another label_field"
            )
        owners = [k for k in br.bifta_runs_for_field(dataset, name) if k != run_key]
        written = (
            f"written by BiFTA run(s) {owners}"
            if owners
            else f"not written by BiFTA run {run_key!r}"
        )
        kind = "" if compatible else f", of an incompatible type {type(field_).__name__}"
        _refuse(plan, f"field {name!r} already exists ({written}{kind})")
        plan.delete_fields.add(name)
        plan.delete_runs.update(owners)
    _check_eval_key(plan)


def _check_eval_key(plan: _Plan) -> None:
    if plan.eval_key is None:
        return
    dataset, key = plan.dataset, plan.eval_key
    if dataset.has_evaluation(key):
        config = dataset.get_evaluation_info(key).config
        own = getattr(config, "pred_field", None) == plan.label_field and getattr(
            config, "gt_field", None
        ) == plan.gt_field
        if not own:
            _refuse(plan, f"evaluation {key!r} already exists for other fields")
        plan.delete_evals.add(key)
    elif dataset.get_field(key) is not None:
        if key in _PROTECTED_FIELDS:
            raise ValueError(f"eval_key {key!r} is a built-in field; choose another")
        _refuse(plan, f"field {key!r} (the eval_key) already exists")
        plan.delete_fields.add(key)


def _refuse(plan: _Plan, what: str) -> None:
    if not plan.overwrite:
        raise ValueError(
            f"{what}; pass overwrite=True to replace it, or choose another "
            "label_field / run_key / eval_key. Nothing was written."
        )


def _check_run_identity(plan: _Plan, params: dict) -> None:
    """An existing run with this key must have the same configuration."""
    if plan.run_key in plan.delete_runs or not br.is_bifta_run(plan.dataset, plan.run_key):
        return
    old = br.get_bifta_run_info(plan.dataset, plan.run_key)
    new = br._plain(params)
    diffs = [k for k in _IDENTITY_KEYS if old.get(k) != new.get(k)]
    if not diffs:
        return
    _refuse(
        plan,
        f"BiFTA run {plan.run_key!r} already exists with a different "
        f"configuration ({', '.join(diffs)} differ)",
    )
    plan.delete_runs.add(plan.run_key)


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------
def _run_params(plan: _Plan, classifier: BiftaClassifier) -> dict:
    desc = plan.descriptions
    about = classifier.describe()
    runtime = plan.runtime
    return dict(
        method=plan.config.method,
        label_field=plan.label_field,
        fields=dict(plan.fields),
        classes=list(plan.classes),
        num_classes=len(plan.classes),
        class_fields=(
            [plan.class_fields[c] for c in plan.classes] if plan.class_fields else None
        ),
        max_class_fields=plan.max_class_fields,
        top_k=plan.top_k,
        model_name=about["model_name"],
        pretrained=None if about["pretrained"] is None else str(about["pretrained"]),
        model_identity=about["model_identity"],
        device=about["device"],
        precision=about["precision"],
        crop_mode=about["crop_mode"],
        logit_scale=about["logit_scale"],
        runtime=dict(
            batch_size=runtime.batch_size,
            num_workers=runtime.num_workers,
            view_batch_size=runtime.view_batch_size,
            text_batch_size=runtime.text_batch_size,
        ),
        descriptions=(
            None
            if desc is None
            else dict(
                source=str(desc.source),
                format=desc.format,
                sha256=desc.sha256,
                provenance=desc.provenance,
                report=desc.report.to_dict(),
            )
        ),
        descriptions_sha256=None if desc is None else desc.sha256,
        descriptions_kept=about["descriptions_kept"],
        config=plan.config.to_dict(),
        gt_field=plan.gt_field,
        eval_key=plan.eval_key,
        package_version=__version__,
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        status="running",
        results={},
    )


def _prepare_dataset(plan: _Plan, params: dict) -> None:
    """Apply ``overwrite`` removals, declare the fields, register the run."""
    dataset = plan.dataset
    for key in sorted(plan.delete_evals):
        if dataset.has_evaluation(key):
            dataset.delete_evaluation(key)
    for key in sorted(plan.delete_runs):
        if br.is_bifta_run(dataset, key):
            br.delete_bifta_run(dataset, key, delete_fields=True)
        elif dataset.has_run(key):
            dataset.delete_run(key)
    schema = dataset.get_field_schema()
    for name in sorted(plan.delete_fields):
        if name in schema:
            dataset.delete_sample_field(name)
    _declare_fields(dataset, plan.fields, plan.class_fields, plan.config)
    br.register_bifta_run(dataset, plan.run_key, params, overwrite=True)


def _declare_fields(dataset, fields: dict, class_fields: dict | None, config: BiftaConfig) -> None:
    """Create the run's fields and attributes up front.

    The batches are written as stored dicts without schema inference, so
    every path they hold is declared here; it also gives the App its sidebar
    filters from the start (one range slider per class under ``L_scores``).
    """

    def add(path, ftype, **kwargs):
        if dataset.get_field(path) is None:
            dataset.add_sample_field(path, ftype, **kwargs)

    for role, name in fields.items():
        if role == "error":
            add(name, fof.StringField)
        else:
            add(name, fof.EmbeddedDocumentField, embedded_doc_type=_ROLE_TYPES[role])
    label = fields["label"]
    add(f"{label}.margin", fof.FloatField)
    add(f"{label}.score", fof.FloatField)
    if config.protocol == "resample":
        add(f"{label}.run_labels", fof.ListField, subfield=fof.StringField)
    if "crops" in fields:
        add(f"{fields['crops']}.detections.best", fof.BooleanField)
        add(f"{fields['crops']}.detections.description", fof.StringField)
    if class_fields:
        for name in class_fields.values():
            add(f"{fields['scores']}.{name}", fof.FloatField)


def _predict_and_write(
    plan: _Plan, classifier: BiftaClassifier, result: RunResult, progress
) -> None:
    todo = plan.samples
    if plan.skip_existing:
        label, error = plan.fields["label"], plan.fields["error"]
        todo = todo.match((F(label) == None) & (F(error) == None))  # noqa: E711
    ids, paths = todo.values(["id", "filepath"])
    result.num_skipped = result.num_samples - len(ids)
    if not ids:
        return
    to_docs = dict(
        crops="crops" in plan.fields,
        class_fields=plan.class_fields,
        top_k=plan.top_k,
    )
    start = time.perf_counter()
    batches = classifier.iter_predictions(paths, keys=paths)
    try:
        with fou.ProgressBar(total=len(ids), progress=progress) as pb:
            for batch in batches:
                batch_ids = [ids[p.index] for p in batch]
                outputs = [bl.prediction_to_documents(p, plan.classes, **to_docs) for p in batch]
                _write_batch(plan.dataset, plan.fields, batch_ids, outputs)
                first_failure = _count(result, batch, batch_ids)
                pb.update(len(batch))
                if first_failure is not None and not plan.skip_failures:
                    p = batch[first_failure]
                    raise SampleFailedError(
                        f"sample {batch_ids[first_failure]} ({paths[p.index]}) failed: "
                        f"{p.error}. The {result.num_processed} predictions made so "
                        "far are saved; rerun with skip_existing=True to resume.",
                        batch_ids[first_failure],
                        paths[p.index],
                    )
    finally:
        batches.close()
        seconds = time.perf_counter() - start
        done = result.num_processed + result.num_failed
        result.images_per_s = done / seconds if seconds > 0 else 0.0


def _write_batch(dataset, fields: dict, ids: list, outputs: list) -> None:
    """One bulk ``set_values`` per field for the whole batch.

    The values are the stored form of the labels (:mod:`bifta_plugin.labels`
    builds them, tests check they load back as FiftyOne labels), so
    FiftyOne passes them through without building label objects; the
    schema was declared by :func:`_declare_fields`.
    """
    for role, name in fields.items():
        values = {sid: out[role] for sid, out in zip(ids, outputs)}
        dataset.set_values(name, values, key_field="id", expand_schema=False, validate=False)


def _count(result: RunResult, batch, ids) -> int | None:
    """Update the counters; returns the index of the batch's first failure."""
    first = None
    for i, (p, sid) in enumerate(zip(batch, ids)):
        if p.ok:
            result.num_processed += 1
            continue
        result.num_failed += 1
        if len(result.failures) < MAX_FAILURES_KEPT:
            result.failures.append((sid, p.error))
        if first is None:
            first = i
    return first


def _evaluate(plan: _Plan, result: RunResult) -> None:
    dataset, key = plan.dataset, plan.eval_key
    label, gt = plan.fields["label"], plan.gt_field
    view = plan.samples.exists(label).exists(gt)
    if dataset.has_evaluation(key):
        dataset.delete_evaluation(key)  # ours (checked up front): recompute
    result.num_evaluated = len(view)
    if result.num_evaluated == 0:
        logger.warning("no sample has both %r and %r: nothing to evaluate", label, gt)
        result.eval_key = None
        return
    results = view.evaluate_classifications(label, gt_field=gt, eval_key=key, progress=False)
    result.accuracy = float(results.metrics()["accuracy"])
    if plan.config.protocol == "resample":
        run_labels = view.values(f"{label}.run_labels")
        truth = view.values(f"{gt}.label")
        per_run = _per_run_accuracy(run_labels, truth)
        if per_run is not None:
            result.accuracy_runs_mean = float(per_run.mean())
            result.accuracy_runs_std = float(per_run.std(ddof=0))


def _per_run_accuracy(run_labels: list, truth: list) -> np.ndarray | None:
    """Accuracy of each run, np.ndarray[R], from per-sample run labels."""
    rows = [(r, t) for r, t in zip(run_labels, truth) if r]
    if not rows:
        return None
    num_runs = min(len(r) for r, _ in rows)
    correct = np.array([[r[i] == t for i in range(num_runs)] for r, t in rows])  # [N, R]
    return correct.mean(axis=0)


def _finish_run(
    plan: _Plan, result: RunResult, start: float, status: str, error: str | None = None
) -> None:
    result.elapsed_s = time.perf_counter() - start
    summary = result.to_dict()
    summary.pop("failures")
    summary["num_failures_kept"] = len(result.failures)
    if error is not None:
        summary["error"] = error
    try:
        br.update_bifta_run(
            plan.dataset, plan.run_key, status=status, eval_key=result.eval_key, results=summary
        )
    except Exception:  # never mask the run's own error
        if status == "completed":
            raise
        logger.warning("could not record the status of run %r", plan.run_key, exc_info=True)
