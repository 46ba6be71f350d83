"""Everything :func:`~bifta_plugin.sdk.run.run_bifta` decides before it writes.

:func:`make_plan` resolves and validates the arguments (classes,
descriptions, config, field names, keys) and compares them with the
dataset's fields, runs and evaluations. It returns a frozen
:class:`RunPlan` whose :attr:`RunPlan.deletions` says what the run would
delete first; nothing here writes, so a plan can be shown (and tested)
before anything happens. :meth:`RunPlan.require_allowed` refuses, naming
each conflict, unless ``overwrite`` was given. The one conflict a plan
cannot know before the encoder exists (the same run key used with another
configuration) is found by :func:`run_identity_conflict`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.media as fomm
from fiftyone.core.odm.embedded_document import DynamicEmbeddedDocument

from . import frames as bf
from . import labels as bl
from . import patches as bp
from . import records as br
from . import rules
from .options import OutputSpec, RunOptions, TargetSpec
from ..core import defaults
from .shards import check_shard
from ..core.classnames import validate_classes
from ..core.config import BiftaConfig, get_config
from ..core.methods import descriptions_needed_error
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
    "embeddings": fof.VectorField,  # a field type, not a document type
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
    "target",
)


@dataclass(frozen=True)
class Deletions:
    """What a run with ``overwrite=True`` deletes before it writes.

    Attributes:
        fields: sample fields.
        runs: runs (BiFTA runs go with the fields they wrote).
        evaluations: evaluation keys.
        reasons: one line per conflict, for the error and for display.
    """

    fields: frozenset = frozenset()
    runs: frozenset = frozenset()
    evaluations: frozenset = frozenset()
    reasons: tuple = ()

    def __bool__(self) -> bool:
        return bool(self.fields or self.runs or self.evaluations)

    def __or__(self, other: "Deletions") -> "Deletions":
        return Deletions(
            self.fields | other.fields,
            self.runs | other.runs,
            self.evaluations | other.evaluations,
            self.reasons + other.reasons,
        )

    def summary(self) -> str:
        """The conflicts and what ``overwrite=True`` removes, as lines."""
        if not self:
            return "nothing to delete"
        parts = [
            f"{what}: {', '.join(sorted(names))}"
            for what, names in (
                ("fields", self.fields),
                ("runs", self.runs),
                ("evaluations", self.evaluations),
            )
            if names
        ]
        return "\n".join([*self.reasons, "overwrite=True deletes " + "; ".join(parts)])


@dataclass(frozen=True)
class RunPlan:
    """Everything a run resolved before touching the dataset.

    Attributes:
        samples, dataset: the target collection and its dataset.
        classes: the validated class names.
        descriptions: the checked descriptions (None for "clip"/"ensemble").
        config: the method config.
        runtime: the run options; ``engine`` is their pipeline form.
        output: the output spec with ``run_key`` (and ``eval_key`` when
            evaluating) resolved.
        fields: role -> field name of every field the run writes.
        class_fields: class -> ``L_scores`` attribute, or None (``L_topk``).
        overwrite: whether ``deletions`` may be applied.
        deletions: what must be deleted first (see :class:`Deletions`).
        target: what is classified (images, or the objects of a field:
            :mod:`.patches`).
        object_ids: the only objects classified (from a ``to_patches()``
            view), or None for all.
    """

    samples: Any
    dataset: Any
    classes: tuple
    descriptions: DescriptionSet | None
    config: BiftaConfig
    runtime: RunOptions
    engine: RuntimeOptions
    output: OutputSpec
    fields: Mapping
    class_fields: Mapping | None
    overwrite: bool
    deletions: Deletions = field(default_factory=Deletions)
    target: TargetSpec = TargetSpec()
    object_ids: frozenset | None = None

    @property
    def is_patches(self) -> bool:
        return self.target.patches_field is not None

    @property
    def is_frames(self) -> bool:
        return "frames." in self.fields.get("label", "")

    @property
    def label_field(self) -> str:
        return self.output.label_field

    @property
    def run_key(self) -> str:
        return self.output.run_key

    def require_allowed(self) -> "RunPlan":
        """Refuse a plan that deletes something unless ``overwrite`` allows it.

        Raises:
            ValueError: naming every conflict; nothing was written.
        """
        if self.deletions and not self.overwrite:
            raise ValueError(
                "; ".join(self.deletions.reasons) + "; pass overwrite=True to "
                "replace it, or choose another label_field / run_key / "
                "eval_key. Nothing was written."
            )
        return self


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
        raise ValueError(descriptions_needed_error(config.method))
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


def make_plan(
    samples,
    classes: Sequence[str] | None = None,
    descriptions=None,
    *,
    method: str = defaults.METHOD,
    classes_field: str | None = None,
    descriptions_format: str = defaults.DESCRIPTIONS_FORMAT,
    runtime: RunOptions = RunOptions(),
    output: OutputSpec = OutputSpec(),
    target: TargetSpec = TargetSpec(),
    overwrite: bool = False,
    config_overrides: Mapping[str, Any] | None = None,
) -> RunPlan:
    """Resolve and check a run's arguments against ``samples``; writes nothing.

    Same arguments as :func:`~bifta_plugin.sdk.run.run_bifta` (less the
    encoder, which the plan does not need).

    Returns:
        A :class:`RunPlan`; its ``deletions`` list the existing fields, runs
        and evaluations the run would replace (whether or not ``overwrite``
        allows it: see :meth:`RunPlan.require_allowed`).

    Raises:
        ValueError: a bad argument, or a field no run may replace.
    """
    if hasattr(samples, "media_type"):
        bf.check_target(samples, target, output)
    samples, target, object_ids = bp.resolve_target(samples, target)
    dataset = _check_collection(samples)
    config = get_config(method, **dict(config_overrides or {}))
    engine = _check_runtime(runtime)
    _check_int(output.max_class_fields, "max_class_fields", 0)
    _check_int(output.top_k, "top_k", 1)
    classes = resolve_classes(samples, classes, classes_field)
    descs = resolve_descriptions(descriptions, classes, config, descriptions_format)
    output = _resolve_output(samples, output, patches=target.patches_field is not None)
    if bf.is_video(samples):
        fields = bf.field_plan(output.label_field, config.uses_crops, output)
        _check_eval_names(output, fields)
    elif target.patches_field is not None:
        fields = bp.field_plan(target, output.label_field, config.uses_crops, output.embeddings_field)
        if output.gt_field is not None:
            bp.check_gt(samples, target, output.gt_field, fields)
    else:
        fields = _field_plan(
            output.label_field, config, len(classes), output.max_class_fields,
            output.embeddings_field,
        )
        _check_eval_names(output, fields)
    class_fields = bl.safe_field_names(classes) if "scores" in fields else None
    plan = RunPlan(
        samples=samples,
        dataset=dataset,
        classes=tuple(classes),
        descriptions=descs,
        config=config,
        runtime=runtime,
        engine=engine,
        output=output,
        fields=dict(fields),
        class_fields=class_fields,
        overwrite=bool(overwrite),
        target=target,
        object_ids=object_ids,
    )
    return dataclasses.replace(plan, deletions=existing_conflicts(plan))


def _check_runtime(runtime: RunOptions) -> RuntimeOptions:
    if not isinstance(runtime, RunOptions):
        raise ValueError(f"runtime must be a RunOptions; got {type(runtime).__name__}")
    check_shard(runtime.shard)
    for name in ("skip_existing", "skip_failures", "exif_transpose", "jpeg_draft", "take_over"):
        if not isinstance(getattr(runtime, name), bool):
            raise ValueError(f"{name} must be True or False; got {getattr(runtime, name)!r}")
    return RuntimeOptions(
        batch_size=runtime.batch_size, num_workers=runtime.num_workers, crop_mode=runtime.crop_mode,
        exif_transpose=runtime.exif_transpose, jpeg_draft=runtime.jpeg_draft,
    )


def _resolve_output(samples, output: OutputSpec, patches: bool = False) -> OutputSpec:
    """``output`` checked, with ``run_key`` and ``eval_key`` filled in (a
    patches run's ``gt_field`` is an attribute of the objects, checked by
    :func:`.patches.check_gt`)."""
    if not isinstance(output, OutputSpec):
        raise ValueError(f"output must be an OutputSpec; got {type(output).__name__}")
    label_field = rules.check_field_name(output.label_field, "label_field")
    run_key = output.run_key if output.run_key is not None else label_field
    _check_key(run_key, "run_key", "pass run_key=")
    if output.embeddings_field is not None:
        rules.check_field_name(output.embeddings_field, "embeddings_field")
    eval_key = None
    if output.gt_field is not None:
        if not patches:
            rules.check_classification_field(samples, output.gt_field, "gt_field")
        eval_key = output.eval_key or f"eval_{run_key}"
        _check_key(eval_key, "eval_key", "pass eval_key=")
    elif output.eval_key is not None:
        raise ValueError("eval_key needs gt_field (the ground truth to evaluate against)")
    return dataclasses.replace(output, run_key=run_key, eval_key=eval_key)


def _check_eval_names(output: OutputSpec, fields: Mapping) -> None:
    if output.gt_field is None:
        return
    if output.gt_field in fields.values():
        raise ValueError(f"gt_field {output.gt_field!r} is one of the fields this run writes")
    if output.eval_key in fields.values() or output.eval_key == output.gt_field:
        raise ValueError(f"eval_key {output.eval_key!r} collides with a field of the run")


def _check_collection(samples):
    """The dataset behind ``samples``; only plain image collections."""
    if not hasattr(samples, "_dataset") or not hasattr(samples, "media_type"):
        raise ValueError(
            f"samples must be a FiftyOne dataset or view; got {type(samples).__name__}"
        )
    if samples._is_generated:
        raise ValueError(
            "samples is a generated view (frames or clips); run on "
            "the images' dataset or a view of it"
        )
    if samples.media_type not in (fomm.IMAGE, fomm.VIDEO):
        hint = " (use select_group_slices() first)" if samples.media_type == fomm.GROUP else ""
        raise ValueError(
            f"run_bifta classifies images and video frames; this collection's media "
            f"type is {samples.media_type!r}{hint}"
        )
    # len() and count() of a dataset are the collection's metadata count,
    # which reads 0 after a database crash until the collection is
    # validated: count the ids
    if len(samples) == 0 and samples.count("id") == 0:
        raise ValueError("the collection is empty: there is nothing to classify")
    return samples._dataset


def _check_int(value, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_key(key, what: str, hint: str) -> None:
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(
            f"{what} {key!r} is not a valid identifier (FiftyOne run and "
            f"evaluation keys must be); {hint}a name like 'bifta_v2'"
        )


def resolve_classes(samples, classes=None, classes_field=None) -> list[str]:
    """The run's classes: ``classes`` checked, or the sorted distinct labels
    of the Classification field ``classes_field`` over the whole dataset of
    ``samples`` (:func:`~bifta_plugin.sdk.rules.field_classes`).

    Raises:
        ValueError: both or neither given, a bad field, no labels, bad names.
    """
    if classes is not None and classes_field is not None:
        raise ValueError("pass classes or classes_field, not both")
    if classes_field is not None:
        classes = rules.field_classes(samples, classes_field)
    elif classes is None:
        raise ValueError(
            "pass classes (a list of class names) or classes_field (a "
            "Classification field whose labels are the classes)"
        )
    return validate_classes(classes)


def _field_plan(
    label_field: str,
    config: BiftaConfig,
    num_classes: int,
    max_class_fields: int,
    embeddings_field: str | None = None,
) -> dict:
    names = bl.field_names(label_field)
    roles = ["label"]
    if config.uses_crops:
        roles.append("crops")
    roles.append("scores" if num_classes <= max_class_fields else "topk")
    roles.append("error")
    fields = {role: names[role] for role in roles}
    if embeddings_field is not None:
        if embeddings_field in names.values():
            raise ValueError(
                f"embeddings_field {embeddings_field!r} is one of the fields of "
                f"label_field {label_field!r}; choose another name"
            )
        fields["embeddings"] = embeddings_field
    return fields


def _field_is_compatible(field_, role: str) -> bool:
    if role == "error":
        return isinstance(field_, fof.StringField)
    if role == "clip":
        return isinstance(field_, fof.EmbeddedDocumentField) and field_.document_type is fol.Classification
    if role == "embeddings":
        return isinstance(field_, fof.VectorField)
    if role in ("patches", "best_crop"):
        return bp.field_is_compatible(field_, role)
    return (
        isinstance(field_, fof.EmbeddedDocumentField)
        and field_.document_type is ROLE_TYPES[role]
    )




def existing_conflicts(plan: RunPlan) -> Deletions:
    """What of the dataset's fields, runs and evaluations the run would
    replace; reads only.

    Raises:
        ValueError: a field that no run may replace (built-in, read-only, the
            ground truth), whatever ``overwrite`` says.
    """
    dataset, run_key = plan.dataset, plan.run_key
    found = Deletions()
    own = br.is_bifta_run(dataset, run_key)
    if dataset.has_run(run_key) and not own:
        found |= Deletions(
            runs=frozenset([run_key]),
            reasons=(f"run key {run_key!r} is taken by a run that is not a BiFTA run",),
        )
    own_fields = set()
    if own:
        info = br.get_bifta_run_info(dataset, run_key)
        if info.get("label_field") == plan.label_field:
            own_fields = set((info.get("fields") or {}).values())
    for role, name in plan.fields.items():
        current = dataset.get_field(name)  # nested paths too (a patches run's attributes)
        if current is not None and not (
            name in own_fields and _field_is_compatible(current, role)
        ):
            found |= _field_conflict(plan, role, name, current)
    return found | _eval_key_conflict(plan)


def _field_conflict(plan: RunPlan, role: str, name: str, field_) -> Deletions:
    if name in PROTECTED_FIELDS or field_.read_only or name == plan.output.gt_field:
        raise ValueError(
            f"field {name!r} cannot be used by a BiFTA run; choose another label_field"
        )
    owners = [k for k in br.bifta_runs_for_field(plan.dataset, name) if k != plan.run_key]
    written = (
        f"written by BiFTA run(s) {owners}"
        if owners
        else f"not written by BiFTA run {plan.run_key!r}"
    )
    compatible = _field_is_compatible(field_, role)
    kind = "" if compatible else f", of an incompatible type {type(field_).__name__}"
    return Deletions(
        fields=frozenset([name]),
        runs=frozenset(owners),
        reasons=(f"field {name!r} already exists ({written}{kind})",),
    )


def _eval_key_conflict(plan: RunPlan) -> Deletions:
    dataset, key = plan.dataset, plan.output.eval_key
    if key is None:
        return Deletions()
    if dataset.has_evaluation(key):
        config = dataset.get_evaluation_info(key).config
        pred, gt = plan.label_field, plan.output.gt_field
        if plan.is_patches:  # evaluated on the patches view: C.L against C.<gt>
            c = bp.container(plan.target)
            pred, gt = f"{c}.{plan.label_field}", f"{c}.{gt}"
        own = getattr(config, "pred_field", None) == pred and getattr(
            config, "gt_field", None
        ) == gt
        if own:  # recomputed by the run itself
            return Deletions()
        return Deletions(
            evaluations=frozenset([key]),
            reasons=(f"evaluation {key!r} already exists for other fields",),
        )
    if dataset.get_field(key) is not None:
        if key in PROTECTED_FIELDS:
            raise ValueError(f"eval_key {key!r} is a built-in field; choose another")
        return Deletions(
            fields=frozenset([key]),
            reasons=(f"field {key!r} (the eval_key) already exists",),
        )
    return Deletions()


def run_identity_conflict(plan: RunPlan, params: Mapping) -> Deletions:
    """An existing BiFTA run under this key with another configuration.

    Args:
        plan: the plan.
        params: the new run's parameters
            (:func:`~bifta_plugin.sdk.writing.run_params`), which name the
            encoder actually loaded.

    Returns:
        The run to delete, or no deletion.
    """
    if plan.run_key in plan.deletions.runs or not br.is_bifta_run(plan.dataset, plan.run_key):
        return Deletions()
    old = br.get_bifta_run_info(plan.dataset, plan.run_key)
    new = br._plain(dict(params))
    diffs = [k for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    if not diffs:
        return Deletions()
    return Deletions(
        runs=frozenset([plan.run_key]),
        reasons=(
            f"BiFTA run {plan.run_key!r} already exists with a different "
            f"configuration ({', '.join(diffs)} differ)",
        ),
    )
