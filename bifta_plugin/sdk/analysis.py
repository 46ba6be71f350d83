"""Metrics and view builders for browsing (mis)predictions.

Plain functions over a FiftyOne sample collection; no App code. The panels in
``bifta_plugin/ui/panels.py`` only route events to these functions, and SDK
users can call them directly::

    import bifta_plugin.sdk.analysis as ba

    report = ba.build_report(dataset, "bifta", "ground_truth", top_n=20)
    print(report.summary.accuracy, report.matrix.classes)
    session.view = ba.cell_view(dataset, "bifta", "ground_truth", "cat", "dog")

Conventions:

- ``pred_field`` and ``gt_field`` are ``fo.Classification`` fields; a sample
  whose field is ``None`` has no prediction / no ground truth;
- a sample is *evaluated* when it has both; a *mistake* is an evaluated sample
  whose labels differ (samples without a prediction, e.g. failures recorded in
  ``<label_field>_error``, are counted separately and are not mistakes);
- confusion matrices have ground truth in rows and predictions in columns;
- the ``margin`` of a prediction is its top-1 minus top-2 probability, read
  from the label's ``margin`` attribute (written by BiFTA) or, for labels
  without one, computed from ``logits`` (softmax, see :func:`get_margins`).

The class order of a confusion matrix (:func:`order_classes`) is a greedy
chain: it starts from the class with the most confusion mass, then repeatedly
appends the remaining class most confused with the last placed one (ties: most
confused with any placed class, then the base order = ground-truth support
descending, then name). Classes with no confusion end up last, in base order.
Confused classes therefore sit next to each other and the off-diagonal mass
clusters near the diagonal; the order is deterministic.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from typing import Iterable, Sequence

import numpy as np
from fiftyone import ViewField as F

from .records import RunRecords
from .rules import classification_fields

logger = logging.getLogger(__name__)

#: Default tag written by :func:`tag_samples`.
DEFAULT_REVIEW_TAG = "needs_review"

_ORDERS = ("confusion", "support", "name")


# --- result types ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Summary:
    """Sample counts and overall accuracy of one collection.

    ``accuracy`` is ``num_correct / num_evaluated``, None when nothing is
    evaluated (no sample has both a prediction and ground truth).
    """

    num_samples: int
    num_predicted: int
    num_labeled: int
    num_evaluated: int
    num_correct: int
    num_mistakes: int
    accuracy: float | None


@dataclasses.dataclass(frozen=True)
class ClassAccuracy:
    """Per ground-truth class: evaluated samples, correct ones, accuracy."""

    label: str
    support: int
    correct: int
    accuracy: float | None


@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    """Per class over evaluated samples: ``support`` (ground truth),
    ``predicted`` (predictions of the class), ``correct``; ``precision`` =
    correct / predicted and ``recall`` = correct / support, None when the
    denominator is 0."""

    label: str
    support: int
    predicted: int
    correct: int
    precision: float | None
    recall: float | None


@dataclasses.dataclass(frozen=True)
class ConfusedPair:
    """``count`` evaluated samples with ground truth ``gt`` predicted as
    ``pred`` (``gt != pred``)."""

    gt: str
    pred: str
    count: int


@dataclasses.dataclass(frozen=True)
class ConfusionMatrix:
    """Confusion counts over ``classes`` (row = ground truth, col = pred).

    ``matrix`` is an int64 array ``[C, C]``; ``num_classes_total`` counts the
    classes before the ``search`` / ``top_n`` selection.
    """

    classes: list[str]
    matrix: np.ndarray
    num_classes_total: int

    def count(self, gt: str, pred: str) -> int:
        """The cell for ground truth ``gt`` and prediction ``pred``."""
        return int(
            self.matrix[self.classes.index(gt), self.classes.index(pred)]
        )


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the mispredictions panel shows, from one database pass."""

    summary: Summary
    matrix: ConfusionMatrix
    pairs: list[ConfusedPair]
    class_accuracy: list[ClassAccuracy]
    class_metrics: list["ClassMetrics"] = dataclasses.field(
        default_factory=list
    )


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why one sample got its prediction (see :func:`explain_prediction`).

    ``top_classes`` is ``[(class, probability), ...]`` best first (empty when
    the label has no usable logits); ``crops`` are dicts with ``label``,
    ``weight``, ``bounding_box``, ``best`` and ``description``, best first.
    """

    label: str
    confidence: float | None
    runner_up: str | None
    runner_up_probability: float | None
    margin: float | None
    top_classes: list[tuple[str, float]]
    best_description: str | None
    crops: list[dict]
    gt_label: str | None


# --- label counting ----------------------------------------------------------
def count_label_pairs(
    samples, pred_field: str, gt_field: str | None = None
) -> collections.Counter:
    """Counts ``(gt_label, pred_label)`` pairs, None for a missing label.

    One database pass. With ``gt_field=None`` every key is ``(None, pred)``.

    Returns:
        a ``collections.Counter`` keyed by ``(gt, pred)``
    """
    if gt_field is None:
        preds = samples.values(f"{pred_field}.label")
        return collections.Counter((None, p) for p in preds)

    gts, preds = samples.values([f"{gt_field}.label", f"{pred_field}.label"])
    return collections.Counter(zip(gts, preds))


def _summary(counts: collections.Counter) -> Summary:
    total = predicted = labeled = evaluated = correct = 0
    for (gt, pred), n in counts.items():
        total += n
        predicted += n if pred is not None else 0
        labeled += n if gt is not None else 0
        if gt is not None and pred is not None:
            evaluated += n
            correct += n if gt == pred else 0
    return Summary(
        num_samples=total,
        num_predicted=predicted,
        num_labeled=labeled,
        num_evaluated=evaluated,
        num_correct=correct,
        num_mistakes=evaluated - correct,
        accuracy=correct / evaluated if evaluated else None,
    )


def _evaluated(counts: collections.Counter) -> dict[tuple[str, str], int]:
    return {
        (gt, pred): n
        for (gt, pred), n in counts.items()
        if gt is not None and pred is not None
    }


def _pairs(counts, limit: int | None = None) -> list[ConfusedPair]:
    pairs = [
        ConfusedPair(gt, pred, n)
        for (gt, pred), n in _evaluated(counts).items()
        if gt != pred
    ]
    pairs.sort(key=lambda p: (-p.count, p.gt, p.pred))
    return pairs if limit is None else pairs[:limit]


def _class_accuracy(counts) -> list[ClassAccuracy]:
    support = collections.Counter()
    correct = collections.Counter()
    for (gt, pred), n in _evaluated(counts).items():
        support[gt] += n
        correct[gt] += n if gt == pred else 0
    return [
        ClassAccuracy(
            label,
            support[label],
            correct[label],
            correct[label] / support[label],
        )
        for label in sorted(support)
    ]


def _class_metrics(counts) -> list[ClassMetrics]:
    support, predicted, correct = (collections.Counter() for _ in range(3))
    for (gt, pred), n in _evaluated(counts).items():
        support[gt] += n
        predicted[pred] += n
        correct[gt] += n if gt == pred else 0
    return [
        ClassMetrics(
            label,
            support[label],
            predicted[label],
            correct[label],
            correct[label] / predicted[label] if predicted[label] else None,
            correct[label] / support[label] if support[label] else None,
        )
        for label in sorted(set(support) | set(predicted))
    ]


def build_class_metrics(
    samples, pred_field: str, gt_field: str
) -> list[ClassMetrics]:
    """Precision and recall per class (see :class:`ClassMetrics`), by
    name."""
    return _class_metrics(count_label_pairs(samples, pred_field, gt_field))


def build_summary(
    samples, pred_field: str, gt_field: str | None = None
) -> Summary:
    """Counts and overall accuracy of ``samples`` (see :class:`Summary`)."""
    return _summary(count_label_pairs(samples, pred_field, gt_field))


def build_confused_pairs(
    samples, pred_field: str, gt_field: str, limit: int | None = None
) -> list[ConfusedPair]:
    """The off-diagonal cells, most frequent first (ties: gt, then pred
    name), at most ``limit`` of them."""
    return _pairs(count_label_pairs(samples, pred_field, gt_field), limit)


def build_class_accuracy(
    samples, pred_field: str, gt_field: str
) -> list[ClassAccuracy]:
    """Accuracy per ground-truth class over evaluated samples, by name."""
    return _class_accuracy(count_label_pairs(samples, pred_field, gt_field))


# --- confusion matrix --------------------------------------------------------
def order_classes(
    matrix: np.ndarray, support: Sequence[float] | None = None
) -> list[int]:
    """Orders classes so that confused ones are adjacent (greedy chain).

    Args:
        matrix: ``[C, C]`` confusion counts (rows gt, cols pred), classes
            assumed sorted by name (the final tie-break is the index)
        support: per-class weight of the base order, default the row sums

    Returns:
        a permutation of ``range(C)``; see the module docstring
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    num_classes = matrix.shape[0]
    support = matrix.sum(1) if support is None else np.asarray(support)
    confusion = matrix + matrix.T
    np.fill_diagonal(confusion, 0.0)
    mass = confusion.sum(1)

    remaining = sorted(range(num_classes), key=lambda i: (-support[i], i))
    order: list[int] = []
    link = np.zeros(num_classes)  # confusion with any placed class
    while remaining:
        rem = np.asarray(remaining)
        base_rank = np.arange(len(rem))
        last = confusion[order[-1], rem] if order else np.zeros(len(rem))
        if last.max() > 0 or link[rem].max() > 0:
            best = np.lexsort((base_rank, -link[rem], -last))[0]
        else:  # start a new chain
            best = np.lexsort((base_rank, -mass[rem]))[0]
        j = remaining.pop(int(best))
        order.append(j)
        link += confusion[j]
    return order


def select_most_confused(matrix: np.ndarray, top_n: int) -> list[int]:
    """Indices of the ``top_n`` classes with the most off-diagonal mass
    (errors as ground truth plus errors as prediction); ties by row support
    then index. Returned in index order."""
    matrix = np.asarray(matrix, dtype=np.float64)
    off = matrix - np.diag(np.diag(matrix))
    mass = off.sum(0) + off.sum(1)
    rank = np.lexsort((np.arange(len(mass)), -matrix.sum(1), -mass))
    return sorted(int(i) for i in rank[:top_n])


def filter_classes(classes: Iterable[str], search: str | None) -> list[str]:
    """Classes whose name contains ``search`` (case-insensitive); all when
    ``search`` is empty."""
    if not search:
        return list(classes)
    needle = search.strip().lower()
    return [c for c in classes if needle in str(c).lower()]


def _matrix(counts, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for (gt, pred), n in _evaluated(counts).items():
        if gt in index and pred in index:
            matrix[index[gt], index[pred]] += n
    return matrix


def _confusion(
    counts, classes=None, top_n=None, search=None, order="confusion"
) -> ConfusionMatrix:
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
    if classes is None:
        classes = {c for pair in _evaluated(counts) for c in pair}
    classes = sorted(set(classes), key=str)
    total = len(classes)
    classes = filter_classes(classes, search)
    matrix = _matrix(counts, classes)
    if top_n is not None and len(classes) > top_n:
        keep = select_most_confused(matrix, top_n)
        classes = [classes[i] for i in keep]
        matrix = matrix[np.ix_(keep, keep)]
    if order == "confusion":
        perm = order_classes(matrix)
    elif order == "support":
        perm = sorted(range(len(classes)), key=lambda i: -matrix[i].sum())
    else:
        perm = list(range(len(classes)))
    return ConfusionMatrix(
        classes=[classes[i] for i in perm],
        matrix=matrix[np.ix_(perm, perm)],
        num_classes_total=total,
    )


def build_confusion_matrix(
    samples,
    pred_field: str,
    gt_field: str,
    classes: Sequence[str] | None = None,
    top_n: int | None = None,
    search: str | None = None,
    order: str = "confusion",
) -> ConfusionMatrix:
    """Confusion matrix of the evaluated samples of ``samples``.

    Args:
        samples: a FiftyOne sample collection
        pred_field: the prediction ``fo.Classification`` field
        gt_field: the ground-truth ``fo.Classification`` field
        classes (None): the candidate classes (e.g. the run's class list, to
            show empty rows); default the labels seen in evaluated samples
        top_n (None): keep only the ``top_n`` most confused classes
        search (None): keep only classes containing this substring
            (case-insensitive; applied before ``top_n``)
        order ("confusion"): ``"confusion"`` (:func:`order_classes`),
            ``"support"`` (ground-truth count, descending) or ``"name"``

    Returns:
        a :class:`ConfusionMatrix`
    """
    counts = count_label_pairs(samples, pred_field, gt_field)
    return _confusion(counts, classes, top_n, search, order)


def build_report(
    samples,
    pred_field: str,
    gt_field: str,
    top_n: int | None = None,
    search: str | None = None,
    max_pairs: int | None = 25,
    classes: Sequence[str] | None = None,
) -> Report:
    """Summary, confusion matrix, most confused pairs and per-class accuracy
    from a single database pass. ``search`` filters the matrix, the pairs and
    the per-class rows; ``top_n`` applies to the matrix and the per-class
    rows (same classes as the matrix)."""
    counts = count_label_pairs(samples, pred_field, gt_field)
    matrix = _confusion(counts, classes, top_n, search)
    shown = set(matrix.classes)
    pairs = [
        p
        for p in _pairs(counts)
        if not search or (p.gt in shown or p.pred in shown)
    ]
    accuracy = [a for a in _class_accuracy(counts) if a.label in shown]
    return Report(
        summary=_summary(counts),
        matrix=matrix,
        pairs=pairs if max_pairs is None else pairs[:max_pairs],
        class_accuracy=accuracy,
        class_metrics=[m for m in _class_metrics(counts) if m.label in shown],
    )


# --- views -------------------------------------------------------------------
def _label(field: str):
    return F(f"{field}.label")


def cell_view(samples, pred_field: str, gt_field: str, gt: str, pred: str):
    """Exactly the samples with ground truth ``gt`` predicted as ``pred``."""
    return samples.match(
        (_label(gt_field) == gt) & (_label(pred_field) == pred)
    )


def _mistake_expr(pred_field: str, gt_field: str):
    gt, pred = _label(gt_field), _label(pred_field)
    return gt.exists() & pred.exists() & (gt != pred)


def mistakes_view(samples, pred_field: str, gt_field: str):
    """Evaluated samples whose prediction differs from the ground truth, in
    collection order."""
    return samples.match(_mistake_expr(pred_field, gt_field))


def confident_mistakes_view(
    samples, pred_field: str, gt_field: str, min_confidence: float = 0.0
):
    """Mistakes with ``confidence >= min_confidence``, most confident
    first."""
    conf = F(f"{pred_field}.confidence")
    return samples.match(
        _mistake_expr(pred_field, gt_field) & (conf >= min_confidence)
    ).sort_by(f"{pred_field}.confidence", reverse=True, create_index=False)


def class_mistakes_view(
    samples, pred_field: str, gt_field: str, gt_class: str
):
    """Mistakes whose ground truth is ``gt_class``, most confident first."""
    return samples.match(
        (_label(gt_field) == gt_class) & _mistake_expr(pred_field, gt_field)
    ).sort_by(f"{pred_field}.confidence", reverse=True, create_index=False)


def _logit_margin(logits) -> float | None:
    if logits is None or len(logits) < 2:
        return None
    probs = np.sort(_softmax(logits))
    return float(probs[-1] - probs[-2])


def get_margins(samples, pred_field: str) -> tuple[list[str], list]:
    """Sample ids and prediction margins (top-1 minus top-2 probability).

    The ``margin`` attribute is used where set; otherwise the margin is
    computed from ``logits`` (stored as binary vectors, so this happens in
    Python, only for the labels without the attribute). None for samples
    with neither.
    """
    ids, labels, margins = samples.values(
        ["id", f"{pred_field}.label", f"{pred_field}.margin"]
    )
    missing = [
        i
        for i, label, m in zip(ids, labels, margins)
        if label is not None and m is None
    ]
    if missing:
        logits = dict(
            zip(
                *samples.select(missing).values(["id", f"{pred_field}.logits"])
            )
        )
        margins = [
            _logit_margin(logits.get(i)) if m is None else m
            for i, m in zip(ids, margins)
        ]
    return list(ids), list(margins)


def uncertain_view(samples, pred_field: str, max_margin: float = 0.1):
    """Predictions with ``margin <= max_margin``, smallest margin first.

    When every prediction carries the ``margin`` attribute (BiFTA labels) the
    view is a compact match + sort; otherwise margins come from
    :func:`get_margins` and the view selects the matching ids in order.
    Samples without a margin are left out.
    """
    margin = F(f"{pred_field}.margin")
    has_label = samples.exists(f"{pred_field}.label")
    if has_label.count() == has_label.exists(f"{pred_field}.margin").count():
        return samples.match(
            (margin != None) & (margin <= max_margin)  # noqa: E711
        ).sort_by(f"{pred_field}.margin", create_index=False)
    ids, margins = get_margins(samples, pred_field)
    keep = sorted(
        (m, k)
        for k, m in enumerate(margins)
        if m is not None and m <= max_margin
    )
    return samples.select([ids[k] for _, k in keep], ordered=True)


def low_confidence_view(samples, pred_field: str, max_confidence: float = 0.5):
    """Predictions with ``confidence <= max_confidence``, least confident
    first."""
    conf = F(f"{pred_field}.confidence")
    return samples.match(
        (conf != None) & (conf <= max_confidence)  # noqa: E711
    ).sort_by(f"{pred_field}.confidence", create_index=False)


def confidence_range_view(
    samples,
    pred_field: str,
    lower: float,
    upper: float,
    include_upper: bool = False,
):
    """Predictions with ``lower <= confidence < upper`` (``<= upper`` when
    ``include_upper``), e.g. one histogram bin; least confident first."""
    conf = F(f"{pred_field}.confidence")
    top = (conf <= upper) if include_upper else (conf < upper)
    return samples.match((conf >= lower) & top).sort_by(
        f"{pred_field}.confidence", create_index=False
    )


def tag_samples(view, tag: str = DEFAULT_REVIEW_TAG) -> int:
    """Adds ``tag`` to every sample of ``view``.

    Returns:
        the number of samples in ``view`` (all carry the tag afterwards)

    Raises:
        ValueError: if ``tag`` is empty
    """
    tag = (tag or "").strip()
    if not tag:
        raise ValueError("tag must be a non-empty string")
    count = view.count()
    if count:
        view.tag_samples(tag)
    return count


# --- no ground truth ---------------------------------------------------------
def build_confidence_histogram(
    samples, pred_field: str, bins: int = 20
) -> tuple[list[int], list[float]]:
    """Histogram of prediction confidences over ``[0, 1]``.

    Returns:
        ``(counts, edges)`` with ``len(edges) == bins + 1``; the last bin
        includes 1.0
    """
    counts, edges, _ = samples.histogram_values(
        f"{pred_field}.confidence", bins=bins, range=[0.0, 1.0]
    )
    return [int(c) for c in counts], [float(e) for e in edges]


def build_confidence_histogram_by_outcome(
    samples, pred_field: str, gt_field: str, bins: int = 20
) -> tuple[list[int], list[int], list[float]]:
    """Confidence histograms of the correct and of the wrong predictions
    (evaluated samples only), same ``bins + 1`` edges over ``[0, 1]``.

    Returns:
        ``(correct_counts, wrong_counts, edges)``
    """
    gt, pred = _label(gt_field), _label(pred_field)
    evaluated = samples.match(gt.exists() & pred.exists())
    right, edges = build_confidence_histogram(
        evaluated.match(gt == pred), pred_field, bins
    )
    wrong, _ = build_confidence_histogram(
        evaluated.match(gt != pred), pred_field, bins
    )
    return right, wrong, edges


# --- fields and runs ---------------------------------------------------------
def view_path(collection, path: str | None) -> str | None:
    """A run's recorded field path as ``collection`` names it.

    A patches run records ``C.detections.L``: on ``to_patches(C)`` it is
    ``C.L``; a frames run records ``frames.L``: on ``to_frames()`` it is
    ``L``. Other paths (and other collections) are unchanged.
    """
    if path is None or collection is None:
        return path
    patches = getattr(collection, "patches_field", None) if getattr(
        collection, "_is_patches", False) else None
    if patches and path.startswith(f"{patches}.detections."):
        return f"{patches}.{path[len(patches) + len('.detections.'):]}"
    if getattr(collection, "_is_frames", False) and path.startswith("frames."):
        return path[len("frames."):]
    return path


def _run_field(info: dict, role: str = "label", collection=None) -> str | None:
    fields = info.get("fields") or {}
    if role == "label":
        field = fields.get("label") or info.get("label_field") or info["key"]
    else:
        field = fields.get(role)
    return view_path(collection, field)


def _run_gt_field(info: dict, collection=None) -> str | None:
    """The run's ground truth as ``collection`` names it (a patches run's is
    an attribute of its objects)."""
    gt = info.get("gt_field")
    label = (info.get("fields") or {}).get("label", "")
    if gt and ".detections." in label:
        gt = label.rpartition(".")[0] + "." + gt
    return view_path(collection, gt)


def _records(dataset, records: RunRecords | None) -> RunRecords:
    if records is not None:
        return records
    return RunRecords.load(getattr(dataset, "_root_dataset", dataset))


def _run_for_field(records: RunRecords, pred_field: str, collection=None) -> dict | None:
    """The newest BiFTA run that wrote ``pred_field`` as its label field."""
    return next(
        (i for i in reversed(records.infos()) if _run_field(i, collection=collection) == pred_field),
        None,
    )


def default_prediction_field(
    dataset, records: RunRecords | None = None
) -> str | None:
    """The prediction field to show first.

    The label field of the latest BiFTA run when it still exists; else the
    newest classification evaluation's ``pred_field``; else the first
    ``fo.Classification`` field with confidences; else the first one; None
    when there is none. ``records`` (default: loaded here) is the dataset's
    :class:`~bifta_plugin.sdk.records.RunRecords` snapshot.
    """
    records = _records(dataset, records)
    fields = classification_fields(dataset)
    latest = records.latest()
    if latest is not None:
        field = _run_field(records.info(latest), collection=dataset)
        if field in fields:
            return field
    for key in reversed(dataset.list_evaluations()):
        field = getattr(
            dataset.get_evaluation_info(key).config, "pred_field", None
        )
        if field in fields:
            return field
    for field in fields:
        if dataset.exists(f"{field}.confidence").limit(1).count():
            return field
    return fields[0] if fields else None


def default_gt_field(
    dataset, pred_field: str | None, records: RunRecords | None = None
) -> str | None:
    """A ground-truth field for ``pred_field``: the ``gt_field`` of its BiFTA
    run or of a classification evaluation of it, else ``ground_truth``, else
    the first other ``fo.Classification`` field; None when there is none."""
    fields = [f for f in classification_fields(dataset) if f != pred_field]
    run = (
        _run_for_field(_records(dataset, records), pred_field, dataset)
        if pred_field
        else None
    )
    if run is not None and _run_gt_field(run, dataset) in fields:
        return _run_gt_field(run, dataset)
    for key in reversed(dataset.list_evaluations()):
        config = dataset.get_evaluation_info(key).config
        if (
            getattr(config, "pred_field", None) == pred_field
            and getattr(config, "gt_field", None) in fields
        ):
            return config.gt_field
    if "ground_truth" in fields:
        return "ground_truth"
    return fields[0] if fields else None


def get_run_classes(
    dataset, pred_field: str, records: RunRecords | None = None
) -> list[str] | None:
    """The class list (logit order) of the BiFTA run that wrote
    ``pred_field``, else ``dataset.classes[pred_field]``, else
    ``dataset.default_classes``; None when none is known."""
    run = _run_for_field(_records(dataset, records), pred_field, dataset)
    if run is not None and run.get("classes"):
        return [str(c) for c in run["classes"]]
    if dataset.classes.get(pred_field):
        return list(dataset.classes[pred_field])
    return list(dataset.default_classes) or None


def get_crops_field(
    dataset, pred_field: str, records: RunRecords | None = None
) -> str:
    """The crops field of ``pred_field``: as recorded by its BiFTA run, else
    ``f"{pred_field}_crops"`` (the field contract)."""
    run = _run_for_field(_records(dataset, records), pred_field, dataset)
    field = _run_field(run, "crops", dataset) if run is not None else None
    return field or f"{pred_field}_crops"


@dataclasses.dataclass(frozen=True)
class PredictionFields:
    """Everything needed to read one prediction field, resolved once.

    ``gt_field`` is None when no ground-truth field is known; ``classes`` is
    the run's class list in logit order (None when unknown). The dict form
    (``dataclasses.asdict``) is JSON-friendly, so a panel can keep it in its
    state and rebuild it with ``PredictionFields(**d)``.
    """

    pred_field: str
    gt_field: str | None
    crops_field: str
    classes: list[str] | None


def resolve_prediction_fields(
    dataset, pred_field: str | None = None, records: RunRecords | None = None
) -> PredictionFields | None:
    """The :class:`PredictionFields` of ``pred_field`` (default:
    :func:`default_prediction_field`), from one run-records snapshot.

    Returns None when the dataset has no prediction field to show.
    """
    records = _records(dataset, records)
    if pred_field is None:
        pred_field = default_prediction_field(dataset, records)
    if pred_field is None:
        return None
    return PredictionFields(
        pred_field=pred_field,
        gt_field=default_gt_field(dataset, pred_field, records),
        crops_field=get_crops_field(dataset, pred_field, records),
        classes=get_run_classes(dataset, pred_field, records),
    )


# --- per-sample explanation --------------------------------------------------
def _softmax(logits: Sequence[float]) -> np.ndarray:
    values = np.asarray(logits, dtype=np.float64)
    values = np.exp(values - values.max())
    return values / values.sum()


def _crop_rows(detections, max_crops: int) -> list[dict]:
    if detections is None:
        return []
    rows = [
        {
            "label": d.label,
            "weight": d.confidence,
            "bounding_box": list(d.bounding_box),
            "best": bool(
                d.get_field("best")
                if d.has_field("best")
                else d.label == "best"
            ),
            "description": (
                d.get_field("description")
                if d.has_field("description")
                else None
            ),
        }
        for d in detections.detections
    ]
    rows.sort(key=lambda r: (not r["best"], -(r["weight"] or 0.0)))
    return rows[:max_crops]


def explain_prediction(
    sample,
    pred_field: str,
    classes: Sequence[str] | None = None,
    gt_field: str | None = None,
    crops_field: str | None = None,
    top_k: int = 5,
    max_crops: int = 5,
) -> Explanation | None:
    """Predicted class vs runner-up, best description and top crops.

    Args:
        sample: a ``fo.Sample`` (or ``SampleView``)
        pred_field: the prediction field ``L``; crops are read from
            ``L_crops`` (see the field contract in ``docs/ARCHITECTURE.md``)
        classes (None): the run's classes in logit order; without them (or
            when their number differs from the logits) probabilities are
            unknown and only the label and confidence are reported
        gt_field (None): a ground-truth field to report
        crops_field (None): the crops field, default ``f"{pred_field}_crops"``
            (:func:`get_crops_field` knows the run's actual one)
        top_k (5): number of classes in ``top_classes``
        max_crops (5): number of crops listed

    Returns:
        an :class:`Explanation`, or None if the sample has no prediction
    """
    label = (
        sample.get_field(pred_field) if sample.has_field(pred_field) else None
    )
    if label is None:
        return None
    logits = label.logits
    top: list[tuple[str, float]] = []
    if (
        classes is not None
        and logits is not None
        and len(logits) == len(classes)
        and len(classes) > 0
    ):
        probs = _softmax(logits)
        ranked = np.argsort(-probs, kind="stable")
        top = [(str(classes[i]), float(probs[i])) for i in ranked[:top_k]]
    runner = next(((c, p) for c, p in top if c != label.label), (None, None))
    margin = label.get_field("margin") if label.has_field("margin") else None
    if margin is None and top and runner[1] is not None:
        margin = top[0][1] - runner[1] if top[0][0] == label.label else None
    crops_field = crops_field or f"{pred_field}_crops"
    crops = _crop_rows(
        (
            sample.get_field(crops_field)
            if sample.has_field(crops_field)
            else None
        ),
        max_crops,
    )
    best = next((c["description"] for c in crops if c["best"]), None)
    gt = (
        sample.get_field(gt_field)
        if gt_field and sample.has_field(gt_field)
        else None
    )
    return Explanation(
        label=label.label,
        confidence=label.confidence,
        runner_up=runner[0],
        runner_up_probability=runner[1],
        margin=None if margin is None or math.isnan(margin) else margin,
        top_classes=top,
        best_description=best,
        crops=crops,
        gt_label=gt.label if gt is not None else None,
    )


# --- crop thumbnails ---------------------------------------------------------
def crop_thumbnails(
    filepath: str, boxes: Sequence[Sequence[float]], size: int = 96
) -> list[str]:
    """PNG thumbnails of crops of one image, as ``data:`` URLs.

    Args:
        filepath: the image
        boxes: ``[N, 4]`` relative ``[x, y, w, h]`` boxes (FiftyOne's format)
        size (96): the longer side of each thumbnail, in pixels

    Returns:
        one URL per box; empty when the image cannot be read
    """
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(filepath) as image:
            image = image.convert("RGB")
    except (OSError, ValueError) as e:
        logger.warning("no crop thumbnails for %s: %s", filepath, e)
        return []
    width, height = image.size
    urls = []
    for x, y, w, h in boxes:
        left, top = int(x * width), int(y * height)
        right = max(left + 1, int((x + w) * width))
        bottom = max(top + 1, int((y + h) * height))
        crop = image.crop((left, top, right, bottom))
        crop.thumbnail((size, size))
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        urls.append(f"data:image/png;base64,{encoded}")
    return urls


def best_crops_view(samples, crops_field: str):
    """``samples`` with only the best crop left in ``crops_field`` (the
    ``best`` attribute; older runs mark it with the label ``"best"``); no
    sample is dropped."""
    best = (F("best") == True) | (F("label") == "best")  # noqa: E712
    return samples.filter_labels(crops_field, best, only_matches=False)
