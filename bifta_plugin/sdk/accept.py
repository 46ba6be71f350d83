"""Promoting labels into a ground-truth field: the one implementation.

:func:`accept_labels` copies ``fo.Classification`` labels from one field
(accepted pre-labels, reviewed labels, a prediction a user accepts in the
modal) into the team's ground-truth field. An existing ground-truth label
is never replaced unless ``overwrite=True``; ``dry_run=True`` only counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class AcceptResult:
    """Counts of one :func:`accept_labels` call (the same for a dry run)."""

    from_field: str
    to_field: str
    num_candidates: int  # samples with a label in from_field
    num_below_confidence: int  # left out by min_confidence
    num_new: int  # written where to_field was empty
    num_conflicts: int  # to_field already set to a different label
    num_same: int  # to_field already holds the same label (untouched)
    num_overwritten: int  # conflicts replaced (overwrite=True)
    dry_run: bool

    @property
    def num_written(self) -> int:
        return self.num_new + self.num_overwritten

    def message(self) -> str:
        verb = "would be" if self.dry_run else "were"
        text = (
            f"{self.num_written:,} labels {verb} written to {self.to_field!r} "
            f"({self.num_new:,} new"
        )
        if self.num_overwritten:
            text += f", {self.num_overwritten:,} overwritten"
        text += ")"
        kept = self.num_conflicts - self.num_overwritten
        if kept:
            text += f"; {kept:,} existing labels differ and are kept (overwrite to replace)"
        if self.num_same:
            text += f"; {self.num_same:,} already agree"
        if self.num_below_confidence:
            text += f"; {self.num_below_confidence:,} below the minimum confidence"
        return text

    def to_dict(self) -> dict:
        return dict(asdict(self), num_written=self.num_written)


def accept_labels(
    samples,
    from_field: str,
    to_field: str,
    *,
    min_confidence: float | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    runner_up: bool = False,
) -> AcceptResult:
    """Copy the labels of ``from_field`` into ``to_field``.

    Args:
        samples: the collection (e.g. a view of the accepted samples).
        from_field: a ``fo.Classification`` field.
        to_field: the ground-truth ``fo.Classification`` field (created
            when missing).
        min_confidence: only labels with ``confidence >= min_confidence``
            (labels without a confidence are left out when set).
        overwrite: replace an existing, different label of ``to_field``.
        dry_run: count only, write nothing.
        runner_up: copy each label's second most probable class instead,
            with its softmax probability as the confidence (from the
            label's ``logits`` and the run's class list in logit order;
            labels without them are left out). ``min_confidence`` then
            applies to that probability.

    Returns:
        An :class:`AcceptResult`; the copies carry the attribute
        ``accepted_from=from_field``.

    Raises:
        ValueError: same field twice, a missing or non-Classification field.
    """
    import fiftyone.core.fields as fof
    import fiftyone.core.labels as fol

    if from_field == to_field:
        raise ValueError("from_field and to_field must differ")
    _require_classification(samples, from_field, must_exist=True)
    _require_classification(samples, to_field, must_exist=False)
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    has_to = samples.get_field(to_field) is not None
    view = samples.exists(from_field)
    ids, labels, confs = view.values(
        ["id", f"{from_field}.label", f"{from_field}.confidence"]
    )
    if runner_up:
        labels, confs = _runner_ups(samples, view, from_field, labels)
    current = view.values(f"{to_field}.label") if has_to else [None] * len(ids)
    below = new = conflicts = same = 0
    write = {}
    for sid, label, conf, old in zip(ids, labels, confs, current):
        if label is None:  # no runner-up (logits or classes missing)
            continue
        if min_confidence is not None and (conf is None or conf < min_confidence):
            below += 1
        elif old is None:
            new += 1
            write[sid] = (label, conf)
        elif old == label:
            same += 1
        else:
            conflicts += 1
            if overwrite:
                write[sid] = (label, conf)
    result = AcceptResult(
        from_field=from_field,
        to_field=to_field,
        num_candidates=len(ids),
        num_below_confidence=below,
        num_new=new,
        num_conflicts=conflicts,
        num_same=same,
        num_overwritten=conflicts if overwrite else 0,
        dry_run=dry_run,
    )
    if dry_run or not write:
        return result
    dataset = samples._root_dataset
    if dataset.get_field(to_field) is None:
        dataset.add_sample_field(
            to_field, fof.EmbeddedDocumentField, embedded_doc_type=fol.Classification
        )
    values = {
        sid: fol.Classification(label=label, confidence=conf, accepted_from=from_field)
        for sid, (label, conf) in write.items()
    }
    dataset.set_values(to_field, values, key_field="id")
    return result


def _require_classification(samples, name: str, must_exist: bool) -> None:
    import fiftyone.core.labels as fol

    if not name:
        raise ValueError("field names must be non-empty")
    f = samples.get_field(name)
    if f is None:
        if must_exist:
            raise ValueError(f"field {name!r} does not exist")
        return
    if getattr(f, "document_type", None) is not fol.Classification:
        raise ValueError(f"field {name!r} is not a fo.Classification field")


def _runner_ups(samples, view, from_field: str, labels):
    """(labels, probabilities) of the runner-up class of each label of
    ``view`` (None, None where the logits or the run's classes are
    missing or do not match)."""
    import numpy as np

    from .analysis import get_run_classes

    classes = get_run_classes(samples._root_dataset, from_field) or []
    out_labels, out_probs = [], []
    for label, logits in zip(labels, view.values(f"{from_field}.logits")):
        if logits is None or len(logits) != len(classes) or not classes:
            out_labels.append(None)
            out_probs.append(None)
            continue
        values = np.asarray(logits, dtype=np.float64)
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        ranked = [int(i) for i in np.argsort(-probs, kind="stable")]
        second = next((i for i in ranked if classes[i] != label), None)
        out_labels.append(None if second is None else str(classes[second]))
        out_probs.append(None if second is None else float(probs[second]))
    return out_labels, out_probs
