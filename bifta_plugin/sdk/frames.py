"""Video frames: a run on a video collection classifies frames.

``run_bifta(videos, ...)`` reads each video with FiftyOne's own reader
(eta's ``FFmpegVideoReader``, ffmpeg underneath) and classifies every
``TargetSpec.frame_step``-th frame (1, 1 + step, ...), or with
``TargetSpec.existing_frames=True`` only the frames the dataset already
has. Crops are keyed by ``"<sample id>/<frame number>"``, so a frame's
result does not depend on the batch it was in.

Frame fields (``L`` = ``label_field``): ``frames.L`` (Classification, as for
images), ``frames.L_crops`` (crop methods), ``frames.L_error`` and the
optional ``frames.E`` embeddings. ``OutputSpec.clip_field`` adds a
sample-level Classification summarising each video: the class of highest
mean probability over its classified frames (``confidence`` = that mean),
with ``majority`` (the most frequent frame label), ``majority_fraction`` and
``num_frames``. Evaluation: ``gt_field="frames.<field>"``, a frame-level
Classification field, through ``evaluate_classifications``.

Frame counts come from ``metadata.total_frame_count``, computed (and
stored) by FiftyOne for videos that lack it.

Crash consistency: each frame is one upsert setting all its fields; a
video's summary is written after its frames (from what is stored, so a
resumed video's summary covers every frame); with ``skip_existing`` a frame
with ``L`` or ``L_error`` is not redone.
"""

from __future__ import annotations

import collections
import datetime
import logging
from typing import Mapping

import numpy as np
from bson import ObjectId

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.media as fomm
from fiftyone import ViewField as F

from . import labels as bl
from . import rules
from .options import OutputSpec, TargetSpec

logger = logging.getLogger(__name__)

FRAMES = "frames."


# ----------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------
def is_video(samples) -> bool:
    return samples.media_type == fomm.VIDEO


def check_target(samples, target: TargetSpec, output: OutputSpec) -> None:
    """Frame options, and an image run's refusal of them.

    Raises:
        ValueError: a bad ``frame_step``, frame options on images, patches
            on a video, or a ground truth that is not a frame field.
    """
    if not isinstance(target, TargetSpec):
        raise ValueError(f"target must be a TargetSpec; got {type(target).__name__}")
    if not isinstance(output, OutputSpec):
        raise ValueError(f"output must be an OutputSpec; got {type(output).__name__}")
    step = target.frame_step
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"frame_step must be an integer >= 1; got {step!r}")
    if not isinstance(target.existing_frames, bool):
        raise ValueError(f"existing_frames must be True or False; got {target.existing_frames!r}")
    if not is_video(samples):
        if step != 1 or target.existing_frames or output.clip_field is not None:
            raise ValueError("frame_step, existing_frames and clip_field are for video collections")
        return
    if target.patches_field is not None:
        raise ValueError("patches_field is for image collections; on videos, frames are classified")
    if output.gt_field is not None and not output.gt_field.startswith(FRAMES):
        raise ValueError(
            f"gt_field {output.gt_field!r}: on a video collection, a frame-level "
            "Classification field ('frames.<name>')"
        )
    if output.clip_field is not None:
        rules.check_field_name(output.clip_field, "clip_field")


def field_plan(label_field: str, uses_crops: bool, output: OutputSpec) -> dict:
    """``{role: path}`` of a frames run: frame fields plus the clip summary."""
    names = bl.field_names(label_field)
    fields = {"label": FRAMES + names["label"]}
    if uses_crops:
        fields["crops"] = FRAMES + names["crops"]
    fields["error"] = FRAMES + names["error"]
    if output.embeddings_field is not None:
        fields["embeddings"] = FRAMES + output.embeddings_field
    if output.clip_field is not None:
        if output.clip_field in names.values():
            raise ValueError(f"clip_field {output.clip_field!r} is a field of label_field")
        fields["clip"] = output.clip_field
    if len(set(fields.values())) != len(fields):
        raise ValueError(f"two of the run's fields share a name: {fields}")
    return fields


def declare_fields(dataset, fields: Mapping) -> None:
    def add_frame(path, ftype, **kwargs):
        if dataset.get_field(path) is None:
            dataset.add_frame_field(path[len(FRAMES):], ftype, **kwargs)

    for role, path in fields.items():
        if role == "clip":
            if dataset.get_field(path) is None:
                dataset.add_sample_field(
                    path, fof.EmbeddedDocumentField, embedded_doc_type=fol.Classification
                )
            for name, ftype in (("majority", fof.StringField), ("majority_fraction", fof.FloatField),
                                ("num_frames", fof.IntField)):
                if dataset.get_field(f"{path}.{name}") is None:
                    dataset.add_sample_field(f"{path}.{name}", ftype)
        elif role == "label":
            add_frame(path, fof.EmbeddedDocumentField, embedded_doc_type=fol.Classification)
            add_frame(f"{path}.margin", fof.FloatField)
            add_frame(f"{path}.score", fof.FloatField)
        elif role == "crops":
            add_frame(path, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
            add_frame(f"{path}.detections.best", fof.BooleanField)
            add_frame(f"{path}.detections.description", fof.StringField)
        elif role == "error":
            add_frame(path, fof.StringField)
        elif role == "embeddings":
            add_frame(path, fof.VectorField)


def delete_field(dataset, path: str) -> None:
    """Delete a sample or ``frames.`` field."""
    if path.startswith(FRAMES):
        dataset.delete_frame_field(path[len(FRAMES):])
    else:
        dataset.delete_sample_field(path)


# ----------------------------------------------------------------------------
# What to classify
# ----------------------------------------------------------------------------
def list_frames(plan, samples) -> tuple[list, int]:
    """``([(sample id, filepath, frame numbers to do)], frames targeted)``."""
    target = plan.target
    if not target.existing_frames:
        samples.compute_metadata()  # total_frame_count; skips videos that have it
    ids, paths = samples.values(["id", "filepath"])
    if target.existing_frames:
        numbers = samples.values("frames.frame_number")
    else:
        totals = samples.values("metadata.total_frame_count")
        numbers = [list(range(1, (t or 0) + 1, target.frame_step)) for t in totals]
    done = [set() for _ in ids]
    if plan.runtime.skip_existing:
        label, error = (plan.fields[r][len(FRAMES):] for r in ("label", "error"))
        finished = samples.match_frames(F(label).exists() | F(error).exists(), omit_empty=False)
        by_id = dict(zip(*finished.values(["id", "frames.frame_number"])))
        done = [set(by_id.get(i) or ()) for i in ids]
    videos = [
        (sid, path, [n for n in (nums or []) if n not in skip])
        for sid, path, nums, skip in zip(ids, paths, numbers, done)
    ]
    return videos, sum(len(n or ()) for n in numbers)


def read_frames(path: str, numbers: list[int], chunk: int):
    """Chunks of ``(frame numbers, HWC uint8 frames)`` of one video, read
    once in order with FiftyOne's video reader (eta ``FFmpegVideoReader``)."""
    import eta.core.video as etav

    if not numbers:
        return
    batch_numbers, batch_frames = [], []
    with etav.FFmpegVideoReader(path, frames=sorted(numbers)) as reader:
        for image in reader:
            batch_numbers.append(reader.frame_number)
            batch_frames.append(np.array(image, copy=True))  # the reader reuses its buffer
            if len(batch_frames) == chunk:
                yield batch_numbers, batch_frames
                batch_numbers, batch_frames = [], []
    if batch_frames:
        yield batch_numbers, batch_frames


# ----------------------------------------------------------------------------
# The run's batches
# ----------------------------------------------------------------------------
def iter_batches(plan, classifier, result, videos, since=None):
    """Classify and write the frames of ``videos``; one bulk upsert and one
    ``"classify"`` event per chunk of ``batch_size`` frames; a video's clip
    summary after its last frame."""
    import time

    from ..core.progress import ProgressEvent
    from .results import SampleFailedError
    from . import writing as rw

    total = sum(len(n) for _, _, n in videos)
    start = time.perf_counter() if since is None else since
    docs = dict(crops="crops" in plan.fields, class_fields=None, top_k=1,
                embeddings="embeddings" in plan.fields)
    number = 0
    try:
        for sid, path, numbers in videos:
            try:
                for frame_numbers, frames in read_frames(path, numbers, plan.engine.batch_size):
                    number += 1
                    keys = [f"{sid}/{n}" for n in frame_numbers]
                    preds = classifier.predict(frames, keys)
                    outputs = [bl.prediction_to_documents(p, plan.classes, **docs) for p in preds]
                    with rw.database_errors(f"writing batch {number}", result):
                        _write_frames(plan, sid, frame_numbers, outputs, number)
                    _count(result, sid, frame_numbers, preds)
                    failed = next((p for p in preds if not p.ok), None)
                    if failed is not None and not plan.runtime.skip_failures:
                        raise SampleFailedError(
                            f"frame {failed.key} of {path} failed: {failed.error}. The "
                            "frames done so far are saved; rerun with skip_existing=True.",
                            sid, path,
                        )
                    done = result.num_processed + result.num_failed
                    yield ProgressEvent("classify", done, total, f"{done}/{total} frames")
            except Exception as e:
                if not _is_read_error(e):
                    raise
                _count_unreadable(result, sid, path, numbers, e)
                if not plan.runtime.skip_failures:
                    raise SampleFailedError(f"video {path} cannot be read: {e}", sid, path) from e
            if "clip" in plan.fields:
                with rw.database_errors("writing a clip summary", result):
                    write_summary(plan, sid)
    finally:
        seconds = time.perf_counter() - start
        done = result.num_processed + result.num_failed
        result.images_per_s = done / seconds if seconds > 0 else 0.0


def _is_read_error(e: Exception) -> bool:
    """An error of reading the video (not of this code)."""
    import eta.core.utils as etau
    import eta.core.video as etav

    return isinstance(e, (
        OSError, etau.ExecutableRuntimeError, etav.VideoReaderError, etav.VideoStreamInfoError,
        etav.FFmpegStreamingError,
    ))


def _count(result, sid, frame_numbers, preds) -> None:
    for n, p in zip(frame_numbers, preds):
        if p.ok:
            result.num_processed += 1
        else:
            result.num_failed += 1
            if len(result.failures) < 100:
                result.failures.append((f"{sid}/{n}", p.error))


def _count_unreadable(result, sid, path, numbers, error) -> None:
    result.num_failed += len(numbers)
    if len(result.failures) < 100:
        result.failures.append((sid, f"cannot read video {path}: {error}"))


def _write_frames(plan, sid: str, frame_numbers, outputs, number: int) -> None:
    """One bulk write: one upsert per frame setting all its fields."""
    from pymongo import UpdateOne

    from . import writing as rw

    dataset = plan.dataset
    now = datetime.datetime.utcnow()
    schema = {role: dataset.get_field(path) for role, path in plan.fields.items() if role != "clip"}
    ops = []
    for n, out in zip(frame_numbers, outputs):
        values = {
            path[len(FRAMES):]: rw._stored(schema[role], role, out[role])
            for role, path in plan.fields.items()
            if role != "clip"
        }
        ops.append(UpdateOne(
            {"_sample_id": ObjectId(sid), "frame_number": n},
            {"$set": {**values, "last_modified_at": now},
             "$setOnInsert": {"_dataset_id": dataset._doc.id, "created_at": now}},
            upsert=True,
        ))
    rw.kill_point("before_batch", number)
    dataset._bulk_write(ops, frames=True)
    rw.kill_point("after_batch", number)


def clip_summary(labels, logits, classes) -> dict | None:
    """The clip-level Classification (stored form) of a video's frames.

    Args:
        labels: the frames' predicted labels (None for unclassified frames).
        logits: their logits, list[C] each (None likewise).
        classes: the run's classes, in the logits' order.

    Returns:
        label = argmax of the mean softmax probability, confidence = that
        mean; ``majority`` / ``majority_fraction`` the most frequent frame
        label (ties: class order); ``num_frames``; None without frames.
    """
    rows = [(lab, lg) for lab, lg in zip(labels, logits) if lab is not None and lg is not None]
    if not rows:
        return None
    z = np.asarray([lg for _, lg in rows], dtype=np.float64)  # [N, C]
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    mean = probs.mean(axis=0)
    c = int(np.argmax(mean))
    counts = collections.Counter(lab for lab, _ in rows)
    majority = max(classes, key=lambda k: (counts.get(k, 0), -classes.index(k)))
    return {
        "_id": ObjectId(), "_cls": "Classification", "tags": [],
        "label": classes[c], "confidence": float(mean[c]),
        "majority": majority, "majority_fraction": counts[majority] / len(rows),
        "num_frames": len(rows),
    }


def write_summary(plan, sid: str) -> None:
    """The clip field of one video, from its stored frames."""
    from pymongo import UpdateOne

    label = plan.fields["label"]
    one = plan.dataset.select(sid)
    labels, logits = one.values([f"{label}.label", f"{label}.logits"])
    doc = clip_summary(labels[0] or [], logits[0] or [], list(plan.classes))
    now = datetime.datetime.utcnow()
    plan.dataset._bulk_write(
        [UpdateOne({"_id": ObjectId(sid)},
                   {"$set": {plan.fields["clip"]: doc, "last_modified_at": now}})],
        ids=[sid],
    )


def evaluate(plan, result) -> None:
    """``evaluate_classifications`` of ``frames.L`` against the frame-level
    ``gt_field`` (per frame)."""
    dataset, key = plan.dataset, plan.output.eval_key
    pred, gt = plan.fields["label"], plan.output.gt_field
    if dataset.has_evaluation(key):
        dataset.delete_evaluation(key)
    both = F(pred[len(FRAMES):]).exists() & F(gt[len(FRAMES):]).exists()
    view = plan.samples.match_frames(both)
    result.num_evaluated = int(view.count("frames"))
    if result.num_evaluated == 0:
        result.eval_key = None
        return
    results = view.evaluate_classifications(pred, gt_field=gt, eval_key=key, progress=False)
    result.accuracy = float(results.metrics()["accuracy"])


def count_frames(videos) -> int:
    return sum(len(n) for _, _, n in videos)
