"""bifta_plugin.sdk.analysis on a hand-built dataset with known confusions.

No model runs here: predictions are written directly as fo.Classification
labels (label, confidence, logits, margin attribute), as the field contract in
docs/ARCHITECTURE.md describes them.
"""

import numpy as np
import pytest

import fiftyone as fo

from bifta_plugin.sdk import analysis as ba
from bifta_plugin.sdk.rules import classification_fields

pytestmark = pytest.mark.fiftyone

CLASSES = ["cat", "dog", "fox", "owl"]

#: (name, gt, pred, confidence, margin); None = field missing
ROWS = [
    ("cat1", "cat", "cat", 0.90, 0.80),
    ("cat2", "cat", "cat", 0.80, 0.60),
    ("cat3", "cat", "cat", 0.70, 0.40),
    ("cat4", "cat", "dog", 0.95, 0.90),
    ("cat5", "cat", "dog", 0.55, 0.10),
    ("cat6", "cat", "fox", 0.40, 0.02),
    ("dog1", "dog", "dog", 0.90, 0.85),
    ("dog2", "dog", "dog", 0.85, 0.70),
    ("dog3", "dog", "dog", 0.60, 0.20),
    ("dog4", "dog", "dog", 0.75, 0.50),
    ("dog5", "dog", "cat", 0.85, 0.75),
    ("fox1", "fox", "fox", 0.65, 0.30),
    ("fox2", "fox", "fox", 0.45, 0.03),
    ("owl1", "owl", "owl", 0.99, 0.98),
    ("nogt", None, "cat", 0.50, 0.09),  # prediction, no ground truth
    ("fail", "dog", None, None, None),  # ground truth, failed prediction
]
BY_NAME = {r[0]: r for r in ROWS}


def _logits_for(pred, confidence, margin):
    """Logits (class order CLASSES) whose softmax has top-1 ``confidence``
    on ``pred`` and runner-up ``confidence - margin`` on the next class
    (ROWS keep ``2 * confidence - margin <= 1``)."""
    top = CLASSES.index(pred)
    second = (top + 1) % len(CLASSES)
    rest = (1.0 - confidence - (confidence - margin)) / (len(CLASSES) - 2)
    probs = np.full(len(CLASSES), max(rest, 1e-6))
    probs[top], probs[second] = confidence, confidence - margin
    return np.log(probs / probs.sum()).tolist()


def _prediction(pred, confidence, margin, with_margin=True):
    label = fo.Classification(
        label=pred,
        confidence=confidence,
        logits=_logits_for(pred, confidence, margin),
    )
    if with_margin:
        label["margin"] = margin
    return label


def build_dataset(fo_dataset, with_margin=True):
    """The ROWS dataset: fields ``bifta`` (predictions), ``ground_truth``."""
    ds = fo_dataset()
    samples = []
    for name, gt, pred, conf, margin in ROWS:
        sample = fo.Sample(filepath=f"/nonexistent/{name}.jpg", name=name)
        if gt is not None:
            sample["ground_truth"] = fo.Classification(label=gt)
        if pred is not None:
            sample["bifta"] = _prediction(pred, conf, margin, with_margin)
        samples.append(sample)
    ds.add_samples(samples)
    return ds


@pytest.fixture
def ds(fo_dataset):
    return build_dataset(fo_dataset)


def names(view):
    return view.values("name")


def expected(predicate):
    return [r[0] for r in ROWS if predicate(*r[1:])]


def is_mistake(gt, pred, *_):
    return gt is not None and pred is not None and gt != pred


# --- counts ------------------------------------------------------------------
def test_summary_counts(ds):
    s = ba.build_summary(ds, "bifta", "ground_truth")
    assert s.num_samples == 16
    assert s.num_predicted == 15
    assert s.num_labeled == 15
    assert s.num_evaluated == 14
    assert s.num_correct == 10
    assert s.num_mistakes == 4
    assert s.accuracy == pytest.approx(10 / 14)


def test_summary_without_ground_truth(ds):
    s = ba.build_summary(ds, "bifta")
    assert (s.num_samples, s.num_predicted, s.num_labeled) == (16, 15, 0)
    assert (s.num_evaluated, s.num_mistakes, s.accuracy) == (0, 0, None)


def test_confusion_matrix_exact_counts(ds):
    cm = ba.build_confusion_matrix(ds, "bifta", "ground_truth")
    assert sorted(cm.classes) == CLASSES
    assert cm.num_classes_total == 4
    expected_cells = {
        ("cat", "cat"): 3,
        ("cat", "dog"): 2,
        ("cat", "fox"): 1,
        ("dog", "dog"): 4,
        ("dog", "cat"): 1,
        ("fox", "fox"): 2,
        ("owl", "owl"): 1,
    }
    for gt in CLASSES:
        for pred in CLASSES:
            assert cm.count(gt, pred) == expected_cells.get((gt, pred), 0)
    # rows are ground truth: row sums = support over evaluated samples
    assert cm.matrix.sum() == 14
    assert cm.matrix[cm.classes.index("cat")].sum() == 6


def test_confusion_matrix_matches_fiftyone_evaluation(ds):
    results = ds.evaluate_classifications(
        "bifta", gt_field="ground_truth", eval_key="eval"
    )
    cm = ba.build_confusion_matrix(ds, "bifta", "ground_truth")
    theirs = results.confusion_matrix(classes=cm.classes)
    np.testing.assert_array_equal(cm.matrix, theirs)


def test_order_clusters_confusions(ds):
    cm = ba.build_confusion_matrix(ds, "bifta", "ground_truth")
    # cat/dog share the most confusion mass, then fox (confused with cat);
    # owl, never confused, comes last
    assert cm.classes == ["cat", "dog", "fox", "owl"]
    by_name = ba.build_confusion_matrix(
        ds, "bifta", "ground_truth", order="name"
    )
    assert by_name.classes == CLASSES


def test_order_classes_block_structure():
    # a<->c and b<->d confused; equal support; classes sorted by name
    m = np.array(
        [
            [5, 0, 4, 0],
            [0, 5, 0, 2],
            [1, 0, 5, 0],
            [0, 1, 0, 5],
        ]
    )
    assert ba.order_classes(m) == [0, 2, 1, 3]
    # deterministic and a permutation for any input
    rng = np.random.default_rng(0)
    big = rng.integers(0, 5, size=(30, 30))
    order = ba.order_classes(big)
    assert sorted(order) == list(range(30))
    assert ba.order_classes(big) == order


def test_order_classes_no_confusion_uses_support():
    m = np.diag([1, 5, 3])
    assert ba.order_classes(m) == [1, 2, 0]


def test_top_n_and_search(ds):
    top2 = ba.build_confusion_matrix(ds, "bifta", "ground_truth", top_n=2)
    assert sorted(top2.classes) == ["cat", "dog"]
    assert top2.num_classes_total == 4
    assert top2.count("cat", "dog") == 2
    found = ba.build_confusion_matrix(
        ds, "bifta", "ground_truth", search="O"
    )  # dOg, fOx, Owl
    assert sorted(found.classes) == ["dog", "fox", "owl"]
    assert ba.filter_classes(CLASSES, "") == CLASSES
    assert ba.filter_classes(CLASSES, " CA ") == ["cat"]
    with pytest.raises(ValueError, match="order"):
        ba.build_confusion_matrix(ds, "bifta", "ground_truth", order="x")
    with pytest.raises(ValueError, match="top_n"):
        ba.build_confusion_matrix(ds, "bifta", "ground_truth", top_n=0)


def test_select_most_confused():
    m = np.array([[9, 3, 0], [1, 9, 0], [0, 0, 9]])
    assert ba.select_most_confused(m, 2) == [0, 1]
    assert ba.select_most_confused(m, 1) == [0]  # tie 4/4: support, index


def test_confused_pairs_table(ds):
    pairs = ba.build_confused_pairs(ds, "bifta", "ground_truth")
    assert [(p.gt, p.pred, p.count) for p in pairs] == [
        ("cat", "dog", 2),
        ("cat", "fox", 1),
        ("dog", "cat", 1),
    ]
    assert len(ba.build_confused_pairs(ds, "bifta", "ground_truth", 1)) == 1


def test_per_class_accuracy(ds):
    rows = ba.build_class_accuracy(ds, "bifta", "ground_truth")
    got = {r.label: (r.support, r.correct, r.accuracy) for r in rows}
    assert got == {
        "cat": (6, 3, 0.5),
        "dog": (5, 4, 0.8),
        "fox": (2, 2, 1.0),
        "owl": (1, 1, 1.0),
    }


def test_report_is_consistent(ds):
    report = ba.build_report(ds, "bifta", "ground_truth", top_n=3, max_pairs=2)
    assert report.summary == ba.build_summary(ds, "bifta", "ground_truth")
    assert sorted(report.matrix.classes) == ["cat", "dog", "fox"]
    assert len(report.pairs) == 2
    assert [a.label for a in report.class_accuracy] == ["cat", "dog", "fox"]
    searched = ba.build_report(ds, "bifta", "ground_truth", search="fox")
    assert [(p.gt, p.pred) for p in searched.pairs] == [("cat", "fox")]


# --- views -------------------------------------------------------------------
def test_cell_view_is_exactly_the_pair(ds):
    view = ba.cell_view(ds, "bifta", "ground_truth", "cat", "dog")
    assert sorted(names(view)) == ["cat4", "cat5"]
    diag = ba.cell_view(ds, "bifta", "ground_truth", "dog", "dog")
    assert sorted(names(diag)) == ["dog1", "dog2", "dog3", "dog4"]
    assert len(ba.cell_view(ds, "bifta", "ground_truth", "owl", "cat")) == 0


def test_mistakes_view(ds):
    view = ba.mistakes_view(ds, "bifta", "ground_truth")
    assert names(view) == expected(is_mistake)  # collection order
    assert set(names(view)) == {"cat4", "cat5", "cat6", "dog5"}


def test_confident_mistakes_sorted_by_confidence(ds):
    view = ba.confident_mistakes_view(
        ds, "bifta", "ground_truth", min_confidence=0.5
    )
    assert names(view) == ["cat4", "dog5", "cat5"]  # 0.95, 0.85, 0.55
    assert (
        names(ba.confident_mistakes_view(ds, "bifta", "ground_truth"))[-1]
        == "cat6"
    )


def test_uncertain_view_sorted_by_margin(ds):
    view = ba.uncertain_view(ds, "bifta", max_margin=0.15)
    # margins 0.02, 0.03, 0.09, 0.10 (the failed sample has none)
    assert names(view) == ["cat6", "fox2", "nogt", "cat5"]


def test_uncertain_view_from_logits_without_margin_attr(fo_dataset):
    ds = build_dataset(fo_dataset, with_margin=False)
    ids, margins = ba.get_margins(ds, "bifta")
    got = dict(zip(ds.values("name"), margins))
    for name, _, pred, _, margin in ROWS:
        if pred is None:
            assert got[name] is None
        else:
            assert got[name] == pytest.approx(margin, abs=1e-5)
    view = ba.uncertain_view(ds, "bifta", max_margin=0.15)
    assert names(view) == ["cat6", "fox2", "nogt", "cat5"]


def test_class_mistakes_view(ds):
    view = ba.class_mistakes_view(ds, "bifta", "ground_truth", "cat")
    assert names(view) == ["cat4", "cat5", "cat6"]  # confidence desc
    assert len(ba.class_mistakes_view(ds, "bifta", "ground_truth", "owl")) == 0


def test_views_compose_with_a_base_view(ds):
    base = ds.match(fo.ViewField("name").is_in(["cat4", "cat6", "dog5"]))
    assert names(ba.mistakes_view(base, "bifta", "ground_truth")) == [
        "cat4",
        "cat6",
        "dog5",
    ]
    report = ba.build_report(base, "bifta", "ground_truth")
    assert report.summary.num_samples == 3
    assert report.summary.accuracy == 0.0


def test_tag_samples_tags_exactly_the_view(ds):
    view = ba.cell_view(ds, "bifta", "ground_truth", "cat", "dog")
    assert ba.tag_samples(view) == 2
    tagged = ds.match_tags(ba.DEFAULT_REVIEW_TAG)
    assert sorted(names(tagged)) == ["cat4", "cat5"]
    assert (
        ba.tag_samples(
            ba.cell_view(ds, "bifta", "ground_truth", "owl", "owl"), "check"
        )
        == 1
    )
    assert names(ds.match_tags("check")) == ["owl1"]
    assert ds.count_sample_tags() == {"needs_review": 2, "check": 1}
    with pytest.raises(ValueError, match="tag"):
        ba.tag_samples(view, "  ")


# --- no ground truth ---------------------------------------------------------
def test_confidence_histogram_and_ranges(ds):
    counts, edges = ba.build_confidence_histogram(ds, "bifta", bins=10)
    assert len(counts) == 10 and len(edges) == 11
    assert sum(counts) == 15
    assert edges[0] == 0.0 and edges[-1] == pytest.approx(1.0)
    confs = [r[3] for r in ROWS if r[3] is not None]
    for k in range(10):
        lo, hi = edges[k], edges[k + 1]
        inside = [c for c in confs if lo <= c < hi or (k == 9 and c == hi)]
        assert counts[k] == len(inside)
        view = ba.confidence_range_view(
            ds, "bifta", lo, hi, include_upper=k == 9
        )
        assert len(view) == len(inside)


def test_low_confidence_view(ds):
    view = ba.low_confidence_view(ds, "bifta", max_confidence=0.55)
    assert names(view) == ["cat6", "fox2", "nogt", "cat5"]


# --- fields, runs, explanation -----------------------------------------------
def test_fields_and_defaults(ds):
    assert classification_fields(ds) == ["bifta", "ground_truth"]
    assert ba.default_prediction_field(ds) == "bifta"  # has confidences
    assert ba.default_gt_field(ds, "bifta") == "ground_truth"
    assert ba.default_gt_field(ds, "ground_truth") == "bifta"
    assert ba.get_run_classes(ds, "bifta") is None
    ds.default_classes = CLASSES
    assert ba.get_run_classes(ds, "bifta") == CLASSES


def test_defaults_follow_the_latest_bifta_run(ds):
    from bifta_plugin.sdk import records as runs

    ds.clone_sample_field("bifta", "bifta2")
    for key, field, stamp in (
        ("bifta", "bifta", "2025-01-01T00:00:00"),
        ("run2", "bifta2", "2025-02-01T00:00:00"),
    ):
        runs.register_bifta_run(
            ds,
            key,
            {
                "method": "bifta",
                "label_field": field,
                "fields": {"label": field, "crops": f"{field}_crops"},
                "classes": CLASSES[::-1],
                "gt_field": "ground_truth",
                "timestamp": stamp,
            },
        )
    assert ba.default_prediction_field(ds) == "bifta2"
    assert ba.default_gt_field(ds, "bifta2") == "ground_truth"
    assert ba.get_run_classes(ds, "bifta2") == CLASSES[::-1]
    assert ba.get_crops_field(ds, "bifta2") == "bifta2_crops"
    assert ba.get_crops_field(ds, "ground_truth") == "ground_truth_crops"


def test_explain_prediction(ds):
    sample = ds.match(fo.ViewField("name") == "cat4").first()
    sample["bifta_crops"] = fo.Detections(
        detections=[
            fo.Detection(
                label="crop",
                bounding_box=[0, 0, 1, 1],
                confidence=0.2,
                best=False,
            ),
            fo.Detection(
                label="best",
                bounding_box=[0.1, 0.2, 0.3, 0.4],
                confidence=0.5,
                best=True,
                description="a dog with floppy ears",
            ),
            fo.Detection(
                label="crop",
                bounding_box=[0.5, 0.5, 0.5, 0.5],
                confidence=0.3,
                best=False,
            ),
        ]
    )
    sample.save()
    e = ba.explain_prediction(
        sample, "bifta", classes=CLASSES, gt_field="ground_truth"
    )
    assert e.label == "dog" and e.gt_label == "cat"
    assert e.runner_up == "fox"  # the next class in _logits_for
    assert e.top_classes[0][0] == "dog"
    assert e.top_classes[0][1] == pytest.approx(0.95, abs=1e-5)
    assert e.runner_up_probability == pytest.approx(0.05, abs=1e-5)
    assert e.margin == pytest.approx(0.90)  # the stored attribute
    assert e.best_description == "a dog with floppy ears"
    assert [c["weight"] for c in e.crops] == [0.5, 0.3, 0.2]
    assert e.crops[0]["best"] and not e.crops[1]["best"]
    # without the class list: label and confidence only
    bare = ba.explain_prediction(sample, "bifta")
    assert bare.runner_up is None and bare.top_classes == []
    failed = ds.match(fo.ViewField("name") == "fail").first()
    assert ba.explain_prediction(failed, "bifta", CLASSES) is None
