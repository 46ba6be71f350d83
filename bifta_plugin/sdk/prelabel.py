"""Pre-labelling: apply calibrated thresholds to a prediction field.

A sample whose prediction's score reaches its class's threshold gets the
predicted label in the output field (e.g. ``prelabel``); every other sample
abstains (no label) and is tagged for review with the reason, recorded in
``<out_field>_reason`` and as a second tag ``<review_tag>:<reason>``:

- ``low_confidence`` / ``small_margin``: below the threshold on that score;
- ``no_threshold``: the predicted class reached no threshold on the
  calibration set (or never occurred in it);
- ``no_prediction``: the sample has no prediction (e.g. it failed).

A pre-label run owns its output field dataset-wide: re-running it clears the
field, the reason field and the review tags the previous run of the same
field applied (only on the samples it tagged), then writes them afresh, so
the result does not depend on how often it ran. The ground-truth field of
the calibration is never written, and samples that already have ground
truth are left alone (``exclude_labelled``). The run is recorded with
``dataset.register_run`` (``run_type="bifta_prelabel"``).
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass

import numpy as np

from .calibration import Calibration, load_calibration

RUN_TYPE = "bifta_prelabel"
REASON_SUFFIX = "_reason"
REASONS = ("low_confidence", "small_margin", "no_threshold", "no_prediction")


@dataclass
class PrelabelPlan:
    """What a pre-label run will do (computed without writing)."""

    num_samples: int
    num_accepted: int
    reasons: dict  # reason -> count
    mode: str
    score: str
    target: float
    precision: float | None  # estimated on the calibration set
    precision_ci: tuple | None
    calibration_samples: int
    accepted_ids: list
    review_ids: dict  # reason -> [sample id]

    @property
    def num_review(self) -> int:
        return sum(self.reasons.values())

    def message(self) -> str:
        """One sentence for forms and logs."""
        head = f"{self.num_accepted:,} of {self.num_samples:,} samples will be auto-accepted"
        if self.precision is not None:
            lo, hi = self.precision_ci
            head += (
                f" at an estimated {self.precision:.1%} precision [{lo:.1%}, {hi:.1%}]"
                f" ({self.score}, {self.mode.replace('_', '-')} thresholds, estimated on "
                f"{self.calibration_samples:,} labelled samples)"
            )
        why = ", ".join(f"{n:,} {r.replace('_', ' ')}" for r, n in self.reasons.items() if n)
        return f"{head}; {self.num_review:,} go to review" + (f" ({why})" if why else "")

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("accepted_ids")
        d.pop("review_ids")
        d["num_review"] = self.num_review
        return d


def plan_prelabel(
    samples,
    calibration: Calibration | str,
    *,
    mode: str = "per_class",
    pred_field: str | None = None,
    exclude_labelled: bool = True,
) -> PrelabelPlan:
    """Decide every sample (no writes).

    Args:
        samples: the collection to pre-label.
        calibration: a :class:`Calibration` or the key it was saved under.
        mode: ``"per_class"`` or ``"global"`` thresholds.
        pred_field: the predictions (default: the calibration's).
        exclude_labelled: skip samples that have the calibration's
            ground-truth field.
    """
    cal = _resolve(samples, calibration)
    pred_field = pred_field or cal.pred_field
    thresholds = cal.thresholds(mode)
    view = samples.exists(cal.gt_field, False) if exclude_labelled else samples
    ids, labels, values = view.values(
        ["id", f"{pred_field}.label", f"{pred_field}.{cal.score}"]
    )
    below = "low_confidence" if cal.score == "confidence" else "small_margin"
    accepted, review = [], {r: [] for r in REASONS}
    for sid, label, value in zip(ids, labels, values):
        if label is None or value is None:
            review["no_prediction"].append(sid)
            continue
        t = thresholds["global"] if mode == "global" else thresholds["classes"].get(label)
        if t is None:
            review["no_threshold"].append(sid)
        elif value >= t:
            accepted.append(sid)
        else:
            review[below].append(sid)
    est = cal.estimate(mode)
    return PrelabelPlan(
        num_samples=len(ids),
        num_accepted=len(accepted),
        reasons={r: len(v) for r, v in review.items()},
        mode=mode,
        score=cal.score,
        target=cal.target,
        precision=est.precision,
        precision_ci=est.precision_ci,
        calibration_samples=cal.num_samples,
        accepted_ids=accepted,
        review_ids=review,
    )


def prelabel(
    samples,
    calibration: Calibration | str,
    *,
    out_field: str = "prelabel",
    review_tag: str = "needs_review",
    mode: str = "per_class",
    pred_field: str | None = None,
    exclude_labelled: bool = True,
    run_key: str | None = None,
) -> PrelabelPlan:
    """Write the pre-labels and review tags; returns the executed plan.

    Args:
        samples: the collection to pre-label.
        calibration: a :class:`Calibration` or its saved key.
        out_field: the ``fo.Classification`` field to write.
        review_tag: the tag of abstained samples.
        mode, pred_field, exclude_labelled: see :func:`plan_prelabel`.
        run_key: the run's key (default ``prelabel_<out_field>``).

    Raises:
        ValueError: ``out_field`` is the prediction or ground-truth field, or
            an existing field that no pre-label run wrote.
    """
    cal = _resolve(samples, calibration)
    pred_field = pred_field or cal.pred_field
    dataset = samples._root_dataset
    run_key = run_key or f"prelabel_{out_field}"
    _check_out_field(dataset, out_field, pred_field, cal.gt_field, review_tag)
    plan = plan_prelabel(
        samples, cal, mode=mode, pred_field=pred_field, exclude_labelled=exclude_labelled
    )
    clear_prelabels(dataset, out_field)
    _write(dataset, pred_field, out_field, plan)
    _tag(dataset, review_tag, plan.review_ids, out_field)
    _record(dataset, run_key, cal, plan, pred_field, out_field, review_tag, calibration)
    return plan


def clear_prelabels(dataset, out_field: str) -> None:
    """Remove a previous pre-label of ``out_field``: its labels, reasons and tags."""
    previous = prelabel_runs_for_field(dataset, out_field)
    reason = out_field + REASON_SUFFIX
    if dataset.get_field(reason) is not None:
        tagged = dataset.exists(reason)
        tags = set()
        for key in previous:
            tags.add(dataset.get_run_info(key).config.review_tag)
        tags |= {f"{t}:{r}" for t in tags for r in REASONS}
        if tags and len(tagged):
            tagged.untag_samples(sorted(tags))
        dataset.clear_sample_field(reason)
    if dataset.get_field(out_field) is not None:
        dataset.clear_sample_field(out_field)
    for key in previous:
        dataset.delete_run(key)


def prelabel_runs_for_field(dataset, out_field: str) -> list[str]:
    """Keys of the pre-label runs that wrote ``out_field``."""
    keys = []
    for key in dataset.list_runs():
        try:
            config = dataset.get_run_info(key).config
        except Exception:  # another tool's run that does not load here
            continue
        if getattr(config, "run_type", None) == RUN_TYPE and config.out_field == out_field:
            keys.append(key)
    return keys


def _write(dataset, pred_field: str, out_field: str, plan: PrelabelPlan) -> None:
    import fiftyone.core.fields as fof
    import fiftyone.core.labels as fol

    if dataset.get_field(out_field) is None:
        dataset.add_sample_field(
            out_field, fof.EmbeddedDocumentField, embedded_doc_type=fol.Classification
        )
    reason_field = out_field + REASON_SUFFIX
    if dataset.get_field(reason_field) is None:
        dataset.add_sample_field(reason_field, fof.StringField)
    if plan.accepted_ids:
        chosen = dataset.select(plan.accepted_ids)
        ids, labels, conf = chosen.values(["id", f"{pred_field}.label", f"{pred_field}.confidence"])
        values = {
            sid: fol.Classification(label=lab, confidence=c, source=pred_field)
            for sid, lab, c in zip(ids, labels, conf)
        }
        dataset.set_values(out_field, values, key_field="id")
    reasons = {sid: r for r, sids in plan.review_ids.items() for sid in sids}
    if reasons:
        dataset.set_values(reason_field, reasons, key_field="id")


def _tag(dataset, review_tag: str, review_ids: dict, out_field: str) -> None:
    for reason, ids in review_ids.items():
        if ids:
            dataset.select(ids).tag_samples([review_tag, f"{review_tag}:{reason}"])


def _record(dataset, run_key, cal, plan, pred_field, out_field, review_tag, calibration):
    params = dict(
        run_type=RUN_TYPE,
        pred_field=pred_field,
        out_field=out_field,
        reason_field=out_field + REASON_SUFFIX,
        review_tag=review_tag,
        gt_field=cal.gt_field,
        calibration_key=calibration if isinstance(calibration, str) else None,
        thresholds=cal.thresholds(plan.mode),
        score=cal.score,
        target=cal.target,
        rule=cal.rule,
        level=cal.level,
        results=_plain(plan.summary()),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(),
    )
    dataset.register_run(run_key, dataset.init_run(**params), overwrite=True)


def _check_out_field(dataset, out_field, pred_field, gt_field, review_tag) -> None:
    import fiftyone.core.labels as fol

    if not out_field or not review_tag:
        raise ValueError("out_field and review_tag must be non-empty")
    if out_field in (pred_field, gt_field):
        raise ValueError(
            f"out_field {out_field!r} is the prediction or ground-truth field; "
            "pre-labels go to a field of their own"
        )
    f = dataset.get_field(out_field)
    if f is None:
        return
    if not prelabel_runs_for_field(dataset, out_field):
        raise ValueError(
            f"field {out_field!r} exists and no pre-label run wrote it; choose another name"
        )
    if getattr(f, "document_type", None) is not fol.Classification:
        raise ValueError(f"field {out_field!r} is not a fo.Classification field")


def _resolve(samples, calibration) -> Calibration:
    if isinstance(calibration, Calibration):
        return calibration
    return load_calibration(samples, calibration)


def _plain(obj):
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
