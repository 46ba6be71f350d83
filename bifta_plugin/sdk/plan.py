"""Everything :func:`bifta_plugin.api.run_bifta` checks before it writes.

:func:`make_plan` resolves and validates the arguments (classes,
descriptions, config, field names, keys) into a :class:`RunPlan`;
:func:`check_existing` and :func:`check_run_identity` compare it with the
dataset's fields, runs and evaluations and refuse, naming the problem,
anything ``overwrite`` was not given to replace. Nothing here writes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.media as fomm
from fiftyone.core.odm.embedded_document import DynamicEmbeddedDocument

from . import labels as bl
from . import records as br
from ..core.classnames import validate_classes
from ..core.config import BiftaConfig, get_config
from ..descriptions.files import DescriptionSet, load_descriptions
from ..engine.pipeline import RuntimeOptions

logger = logging.getLogger(__name__)

# Sample fields a run may never replace, whatever ``overwrite`` says.
PROTECTED_FIELDS = frozenset(
    ("id", "filepath", "tags", "metadata", "created_at", "last_modified_at", "frames")
)

# The type each role's field must have to be resumed into.
ROLE_TYPES = {
    "label": fol.Classification,
    "crops": fol.Detections,
    "topk": fol.Classifications,
    "scores": DynamicEmbeddedDocument,
}

# Run parameters that must match for a run to continue under the same key.
IDENTITY_KEYS = (
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


@dataclass
class RunPlan:
    """Everything :func:`~bifta_plugin.api.run_bifta` resolved before touching the dataset."""

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


def make_plan(samples, classes, descriptions, *, config_overrides, **kw) -> RunPlan:
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

    return RunPlan(
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
        and field_.document_type is ROLE_TYPES[role]
    )


def check_existing(plan: RunPlan) -> None:
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
        if name in PROTECTED_FIELDS or field_.read_only or name == plan.gt_field:
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


def _check_eval_key(plan: RunPlan) -> None:
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
        if key in PROTECTED_FIELDS:
            raise ValueError(f"eval_key {key!r} is a built-in field; choose another")
        _refuse(plan, f"field {key!r} (the eval_key) already exists")
        plan.delete_fields.add(key)


def _refuse(plan: RunPlan, what: str) -> None:
    if not plan.overwrite:
        raise ValueError(
            f"{what}; pass overwrite=True to replace it, or choose another "
            "label_field / run_key / eval_key. Nothing was written."
        )


def check_run_identity(plan: RunPlan, params: dict) -> None:
    """An existing run with this key must have the same configuration."""
    if plan.run_key in plan.delete_runs or not br.is_bifta_run(plan.dataset, plan.run_key):
        return
    old = br.get_bifta_run_info(plan.dataset, plan.run_key)
    new = br._plain(params)
    diffs = [k for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    if not diffs:
        return
    _refuse(
        plan,
        f"BiFTA run {plan.run_key!r} already exists with a different "
        f"configuration ({', '.join(diffs)} differ)",
    )
    plan.delete_runs.add(plan.run_key)
