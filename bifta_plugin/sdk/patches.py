"""Object patches: a run that classifies every object of a Detections field.

``run_bifta(samples, ..., target=TargetSpec(patches_field="P"))`` treats each
object's box (padded, clamped to the image) as the image: the engine
decodes each image once for all its objects
(:class:`~bifta_plugin.engine.regions.Patch`), draws BiFTA's crops inside
the box from ``(seed, "<sample id>/<detection id>")`` and scores the patch
exactly as a whole image.

Fields (``C`` = the objects' field: ``P`` in place, or
``TargetSpec.output_patches_field`` ``O``, a ``Detections`` copy of ``P``;
``L`` = ``label_field``), all attributes of each object:

- ``C.detections.L``: ``fo.Classification`` as for images (label,
  confidence, logits, ``margin``, ``score``);
- ``C.detections.L_error``: why the object failed (a box below
  ``patch_min_size`` pixels, an unreadable image), else None;
- ``C.detections.L_best_crop``: the best crop's ``[x, y, w, h]`` relative to
  the full image (crop methods), so it draws on the sample;
- ``C.detections.E``: the patch's global embedding (``embeddings_field`` E;
  for Brain: ``compute_similarity(samples, patches_field=C, embeddings=E)``).

In the copy ``O`` every object keeps its attributes, gets its own id,
``source_id`` (the id it copies) and ``source_label`` (its label), and its
``label``/``confidence`` are the prediction, so the App draws predicted
classes. Evaluation: ``gt_field`` names a Classification attribute of the
objects (:func:`label_to_attribute` makes one from their own labels); the run
evaluates on ``samples.to_patches(C)``, where ``C.L`` and ``C.<gt>`` are
Classification fields, so ``evaluate_classifications`` and the panels work
per object.

Crash consistency: each sample is one ``UpdateOne`` setting its whole
``C`` (every object with its results), so a sample is written whole or not
at all; a sample is done when each of its objects has ``L`` or ``L_error``.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Mapping

from bson import ObjectId

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
from fiftyone import ViewField as F

from . import labels as bl
from . import rules
from .options import TargetSpec

#: attributes a Detection has built in: never a run's attribute name
BUILTIN_ATTRIBUTES = frozenset(
    ("_cls", "_id", "id", "attributes", "bounding_box", "confidence", "index", "label",
     "mask", "mask_path", "tags", "source_id", "source_label")
)

#: suffixes of the per-object attributes, keyed by role
ATTRIBUTE_SUFFIXES = {"label": "", "error": "_error", "best_crop": "_best_crop"}


# ----------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------
def resolve_target(samples, target: TargetSpec):
    """``(samples, target, object_ids)``: a ``to_patches()`` view becomes its
    source samples, its field the ``patches_field`` and its objects the
    only ones classified (``object_ids``; None: all).

    Raises:
        ValueError: a bad target, or a patches view of another field.
    """
    if not isinstance(target, TargetSpec):
        raise ValueError(f"target must be a TargetSpec; got {type(target).__name__}")
    object_ids = None
    if getattr(samples, "_is_patches", False):
        field = getattr(samples, "patches_field", None)
        if field is None:  # evaluation patches
            raise ValueError(
                "an evaluation patches view cannot be classified; use "
                "to_patches(<Detections field>)"
            )
        if target.patches_field not in (None, field):
            raise ValueError(
                f"samples is a patches view of {field!r}, not of patches_field "
                f"{target.patches_field!r}"
            )
        object_ids = frozenset(samples.values(f"{field}.id"))
        source = samples._source_collection.select(samples.distinct("sample_id"))
        samples, target = source, dataclasses.replace(target, patches_field=field)
    if target.patches_field is None:
        if target.output_patches_field is not None:
            raise ValueError("output_patches_field needs patches_field")
        return samples, target, None
    _check_target(samples, target)
    return samples, target, object_ids


def _check_target(samples, target: TargetSpec) -> None:
    field = samples.get_field(target.patches_field)
    if not (
        isinstance(field, fof.EmbeddedDocumentField) and field.document_type is fol.Detections
    ):
        raise ValueError(
            f"patches_field {target.patches_field!r} must be a Detections field of "
            f"this collection; got {field}"
        )
    out = target.output_patches_field
    if out is not None:
        rules.check_field_name(out, "output_patches_field")
        if out == target.patches_field:
            raise ValueError(
                "output_patches_field equals patches_field; pass None to write "
                "into the objects of patches_field"
            )
    pad = target.patch_padding
    if isinstance(pad, bool) or not isinstance(pad, (int, float)) or not pad >= 0:
        raise ValueError(f"patch_padding must be a number >= 0; got {pad!r}")
    size = target.patch_min_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"patch_min_size must be an integer >= 1; got {size!r}")


def container(target: TargetSpec) -> str:
    """The Detections field that holds the results: ``O`` or ``P``."""
    return target.output_patches_field or target.patches_field


def field_plan(
    target: TargetSpec, label_field: str, uses_crops: bool, embeddings_field: str | None
) -> dict:
    """``{role: path}`` of everything a patches run writes.

    Raises:
        ValueError: an attribute name that a Detection has built in, or two
            roles on one name.
    """
    names = {role: label_field + s for role, s in ATTRIBUTE_SUFFIXES.items()}
    if not uses_crops:
        del names["best_crop"]
    if embeddings_field is not None:
        names["embeddings"] = embeddings_field
    for role, name in names.items():
        if name in BUILTIN_ATTRIBUTES or not name.isidentifier():
            what = "embeddings_field" if role == "embeddings" else "label_field"
            raise ValueError(
                f"{what} {name!r} cannot be an attribute of the objects (a Detection "
                f"has it built in, or it is not an identifier); choose another name"
            )
    if len(set(names.values())) != len(names):
        raise ValueError(f"embeddings_field {embeddings_field!r} collides with {names}")
    prefix = container(target) + ".detections."
    fields = {"patches": target.output_patches_field} if target.output_patches_field else {}
    fields.update({role: prefix + name for role, name in names.items()})
    return fields


def attribute_names(fields: Mapping[str, str]) -> dict:
    """``{role: attribute name}`` of a patches run's ``fields``."""
    return {
        role: path.rpartition(".")[2] for role, path in fields.items() if role != "patches"
    }


def check_gt(samples, target: TargetSpec, gt_field: str, fields: Mapping) -> None:
    """``gt_field`` must be a Classification attribute of the objects of
    ``patches_field`` (copied into ``O`` with them), not one the run writes."""
    path = f"{target.patches_field}.detections.{gt_field}"
    field = samples.get_field(path)
    if not rules.is_classification_field(field):
        raise ValueError(
            f"gt_field {gt_field!r}: for a patches run, a Classification attribute "
            f"of the objects of {target.patches_field!r} ({path}); got {field}. "
            "label_to_attribute() makes one from the objects' labels"
        )
    if gt_field in attribute_names(fields).values():
        raise ValueError(f"gt_field {gt_field!r} is one of the attributes this run writes")


def field_is_compatible(field_, role: str) -> bool:
    """Whether an existing field can be resumed into for ``role``."""
    if role == "patches":
        return isinstance(field_, fof.EmbeddedDocumentField) and field_.document_type is fol.Detections
    if role == "best_crop":
        return isinstance(field_, fof.ListField)
    return False  # the other roles are checked like image runs'


# ----------------------------------------------------------------------------
# Fields
# ----------------------------------------------------------------------------
def declare_fields(dataset, target: TargetSpec, fields: Mapping) -> None:
    """Declare ``O`` (a copy of ``P``'s object schema) and the attributes."""

    def add(path, ftype, **kwargs):
        if dataset.get_field(path) is None:
            dataset.add_sample_field(path, ftype, **kwargs)

    if "patches" in fields:
        out = fields["patches"]
        add(out, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
        add(f"{out}.detections.source_id", fof.StringField)
        add(f"{out}.detections.source_label", fof.StringField)
        _mirror_attributes(dataset, target.patches_field, out, add)
    for role, path in fields.items():
        if role == "label":
            add(path, fof.EmbeddedDocumentField, embedded_doc_type=fol.Classification)
            add(f"{path}.margin", fof.FloatField)
            add(f"{path}.score", fof.FloatField)
        elif role == "error":
            add(path, fof.StringField)
        elif role == "best_crop":
            add(path, fof.ListField, subfield=fof.FloatField)
        elif role == "embeddings":
            add(path, fof.VectorField)


def _mirror_attributes(dataset, source: str, out: str, add) -> None:
    """Declare on ``out``'s objects the custom attributes ``source``'s have
    (one level; a Classification attribute brings its own fields)."""
    prefix = f"{source}.detections."
    for path, f in dataset.get_field_schema(flat=True).items():
        name = path[len(prefix):]
        if not path.startswith(prefix) or "." in name or name in BUILTIN_ATTRIBUTES:
            continue
        kwargs = {}
        if isinstance(f, fof.EmbeddedDocumentField):
            kwargs["embedded_doc_type"] = f.document_type
        elif isinstance(f, fof.ListField) and f.field is not None:
            kwargs["subfield"] = type(f.field)
        add(f"{out}.detections.{name}", type(f), **kwargs)


def label_to_attribute(samples, patches_field: str, attribute: str) -> int:
    """Copy each object's ``label`` into a Classification attribute, e.g. to
    use annotated boxes' labels as a patches run's ``gt_field``.

    Returns:
        The number of objects given the attribute.
    """
    if attribute in BUILTIN_ATTRIBUTES:
        raise ValueError(f"attribute {attribute!r} is built into Detection; choose another")
    path = f"{patches_field}.detections.{attribute}"
    if samples.get_field(path) is None:
        samples._dataset.add_sample_field(
            path, fof.EmbeddedDocumentField, embedded_doc_type=fol.Classification
        )
    labels = samples.values(f"{patches_field}.detections.label")
    values = [
        None if row is None else [None if x is None else fol.Classification(label=x) for x in row]
        for row in labels
    ]
    samples.set_values(path, values)
    return sum(1 for row in values if row for x in row if x is not None)


# ----------------------------------------------------------------------------
# What to classify
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class ObjectList:
    """The objects a run classifies, and where each result goes.

    Attributes:
        sample_ids, filepaths: the samples to write, in order.
        containers: each sample's stored ``P`` (a dict, or None).
        outputs: each sample's stored ``O`` (copy mode; else None).
        sources, keys: :class:`~bifta_plugin.engine.regions.Patch` per
            object and its crop key ``"<sample id>/<detection id>"``.
        owners: per object, ``(sample position, object position in P)``.
    """

    sample_ids: list
    filepaths: list
    containers: list
    outputs: list
    sources: list
    keys: list
    owners: list

    def pending(self) -> list[int]:
        """Objects to classify per sample."""
        counts = [0] * len(self.sample_ids)
        for s, _ in self.owners:
            counts[s] += 1
        return counts


def done_expression(fields: Mapping, target: TargetSpec):
    """A ``ViewExpression``: the sample's objects all have ``L`` or ``L_error``."""
    names = attribute_names(fields)
    c = container(target)
    pending = F(f"{c}.detections").filter(~F(names["label"]).exists() & ~F(names["error"]).exists())
    return F(c).exists() & (pending.length() == 0)


def list_objects(plan, samples) -> ObjectList:
    """The objects of ``samples`` to classify (with ``skip_existing``, of the
    samples not done), each image's objects consecutive."""
    from ..engine.regions import Patch

    target = plan.target
    todo = samples
    if plan.runtime.skip_existing:
        todo = todo.match(~done_expression(plan.fields, target))
    fields = ["id", "filepath", target.patches_field]
    if target.output_patches_field:
        fields.append(target.output_patches_field)
    rows = todo.values(fields, _raw=True)
    ids, paths, containers = rows[0], rows[1], rows[2]
    outputs = rows[3] if target.output_patches_field else [None] * len(ids)
    ids = [str(i) for i in ids]
    selected = plan.object_ids
    sources, keys, owners = [], [], []
    for s, (sid, path, objects) in enumerate(zip(ids, paths, containers)):
        for j, det in enumerate((objects or {}).get("detections") or []):
            det_id = str(det.get("_id"))
            if selected is not None and det_id not in selected:
                continue
            sources.append(
                Patch(path, det.get("bounding_box"), padding=target.patch_padding,
                      min_size=target.patch_min_size)
            )
            keys.append(f"{sid}/{det_id}")
            owners.append((s, j))
    return ObjectList(ids, paths, containers, outputs, sources, keys, owners)


# ----------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------
def object_results(pred, names: Mapping, classes) -> dict:
    """The attributes one prediction sets on its object (stored form)."""
    out = {
        names["label"]: bl.classification_doc(pred, classes),
        names["error"]: pred.error,
    }
    if "best_crop" in names:
        box = None
        if pred.ok and pred.best_crop is not None:
            box = [float(v) for v in pred.relative_boxes()[pred.best_crop]]
        out[names["best_crop"]] = box
    if "embeddings" in names:
        emb = bl.embedding_value(pred)
        out[names["embeddings"]] = bl.embedding_bytes(emb)
    return out


def container_document(objects: ObjectList, s: int, results: Mapping, copy: bool) -> dict:
    """Sample ``s``'s whole results field: ``P`` with the results of the
    objects classified now (in place), or its copy ``O`` (objects not
    classified now keep their earlier copy and results).

    Args:
        results: object position in ``P`` -> ``(prediction, attributes)``.
    """
    source = objects.containers[s] or {"_cls": "Detections", "detections": []}
    detections = source.get("detections") or []
    if not copy:
        return dict(
            source,
            detections=[
                dict(d, **results[j][1]) if j in results else d for j, d in enumerate(detections)
            ],
        )
    earlier = {
        str(d.get("source_id")): d
        for d in ((objects.outputs[s] or {}).get("detections") or [])
    }
    out = []
    for j, det in enumerate(detections):
        before = earlier.get(str(det.get("_id")))
        if j not in results and before is not None:
            out.append(before)
            continue
        copied = dict(det, _id=before["_id"] if before else ObjectId(),
                      source_id=str(det.get("_id")), source_label=det.get("label"))
        if j in results:
            pred, attributes = results[j]
            copied.update(attributes, label=pred.label,
                          confidence=None if pred.confidence is None else float(pred.confidence))
        else:
            copied.pop("confidence", None)
            copied["label"] = None
        out.append(copied)
    return {"_cls": "Detections", "detections": out}


# ----------------------------------------------------------------------------
# The run's batches
# ----------------------------------------------------------------------------
def iter_batches(plan, classifier, result, objects: ObjectList, since=None):
    """Classify ``objects`` and write each sample once all its objects are
    done: one bulk write per engine batch (a batch holds whole images), a
    ``"classify"`` event after each (``done``/``total`` in objects)."""
    import time

    from .results import SampleFailedError
    from . import writing as rw

    names = attribute_names(plan.fields)
    copy = "patches" in plan.fields
    total = len(objects.sources)
    result.num_skipped = result.num_samples - total
    pending = objects.pending()
    results: dict[int, dict] = {s: {} for s in range(len(objects.sample_ids))}
    start = time.perf_counter() if since is None else since
    # samples with nothing to classify: their copy is written at once
    ready = [s for s, n in enumerate(pending) if n == 0 and copy]
    if ready:
        _write(plan, objects, ready, results, copy, 0)
    batches = classifier.iter_predictions(objects.sources, keys=objects.keys)
    try:
        for number, batch in enumerate(rw._worker_errors(batches), 1):
            done_samples = []
            first_failure = None
            for p in batch:
                s, j = objects.owners[p.index]
                results[s][j] = (p, object_results(p, names, plan.classes))
                pending[s] -= 1
                if pending[s] == 0:
                    done_samples.append(s)
                if p.ok:
                    result.num_processed += 1
                else:
                    result.num_failed += 1
                    if len(result.failures) < 100:
                        result.failures.append((objects.keys[p.index], p.error))
                    if first_failure is None:
                        first_failure = p
            with rw.database_errors(f"writing batch {number}", result):
                _write(plan, objects, done_samples, results, copy, number)
            if first_failure is not None and not plan.runtime.skip_failures:
                key = objects.keys[first_failure.index]
                raise SampleFailedError(
                    f"object {key} failed: {first_failure.error}. The predictions made "
                    "so far are saved; rerun with skip_existing=True to resume.",
                    key.split("/")[0], objects.filepaths[objects.owners[first_failure.index][0]],
                )
            done = result.num_processed + result.num_failed
            yield _event(done, total)
    finally:
        batches.close()
        seconds = time.perf_counter() - start
        done = result.num_processed + result.num_failed
        result.images_per_s = done / seconds if seconds > 0 else 0.0


def _event(done: int, total: int):
    from ..core.progress import ProgressEvent

    return ProgressEvent("classify", done, total, f"{done}/{total} objects")


def _write(plan, objects: ObjectList, samples: list, results: dict, copy: bool, number: int):
    """One bulk write: one ``UpdateOne`` per sample setting its whole ``C``."""
    from pymongo import UpdateOne

    from . import writing as rw

    if not samples:
        return
    field = container(plan.target)
    now = datetime.datetime.utcnow()
    ids = [objects.sample_ids[s] for s in samples]
    ops = [
        UpdateOne(
            {"_id": ObjectId(objects.sample_ids[s])},
            {"$set": {field: container_document(objects, s, results[s], copy),
                      "last_modified_at": now}},
        )
        for s in samples
    ]
    rw.kill_point("before_batch", number)
    plan.dataset._bulk_write(ops, ids=ids)
    rw.kill_point("after_batch", number)
    for s in samples:
        results[s] = {}  # written: free the predictions


def evaluate(plan, result) -> None:
    """``evaluate_classifications`` on ``samples.to_patches(C)``: ``C.L``
    against ``C.<gt_field>``, per object."""
    dataset, key = plan.dataset, plan.output.eval_key
    c = container(plan.target)
    pred, gt = f"{c}.{attribute_names(plan.fields)['label']}", f"{c}.{plan.output.gt_field}"
    if dataset.has_evaluation(key):
        dataset.delete_evaluation(key)
    view = plan.samples.to_patches(c).exists(pred).exists(gt)
    result.num_evaluated = len(view)
    if result.num_evaluated == 0:
        result.eval_key = None
        return
    results = view.evaluate_classifications(pred, gt_field=gt, eval_key=key, progress=False)
    result.accuracy = float(results.metrics()["accuracy"])


def patches_view(samples, info: Mapping[str, Any]):
    """The patches view a patches run's results are read on, with its
    prediction field path (``C.L``): ``(view, pred_field)``."""
    fields = info.get("fields") or {}
    c = fields.get("patches") or fields["label"].split(".detections.")[0]
    return samples.to_patches(c), f"{c}.{attribute_names(fields)['label']}"
