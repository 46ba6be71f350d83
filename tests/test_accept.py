"""accept_labels on a real dataset (tests/test_analysis.py's ROWS)."""

import pytest

import fiftyone as fo
from fiftyone import ViewField as F

from bifta_plugin.sdk.accept import AcceptResult, accept_labels
from bifta_plugin.ui.classes_form import split_classes
from test_analysis import CLASSES, build_dataset

pytestmark = pytest.mark.fiftyone


@pytest.fixture
def ds(fo_dataset):
    ds = build_dataset(fo_dataset)
    ds.default_classes = CLASSES
    return ds


def test_fills_an_empty_field_above_the_threshold(ds):
    predicted = ds.exists("bifta")
    confident = predicted.match(F("bifta.confidence") >= 0.8)
    result = accept_labels(ds, "bifta", "reviewed", min_confidence=0.8)
    assert result == AcceptResult(
        accepted=len(confident),
        skipped_existing=0,
        below_threshold=len(predicted) - len(confident),
        no_prediction=len(ds) - len(predicted),
    )
    written = ds.exists("reviewed")
    assert sorted(written.values("id")) == sorted(confident.values("id"))
    assert written.values("reviewed.label") == written.values("bifta.label")
    assert written.values("reviewed.confidence") == [None] * len(written)


def test_existing_labels_are_kept_unless_overwrite(ds):
    evaluated = ds.exists("bifta").exists("ground_truth")
    mistakes = evaluated.match(F("ground_truth.label") != F("bifta.label"))
    ids = mistakes.values("id")
    before = mistakes.values("ground_truth.label")
    result = accept_labels(mistakes, "bifta", "ground_truth")
    assert result.accepted == 0 and result.skipped_existing == len(ids)
    assert ds.select(ids).values("ground_truth.label") == before

    dry = accept_labels(mistakes, "bifta", "ground_truth", overwrite=True,
                        dry_run=True)  # fmt: skip
    assert dry.accepted == len(ids)
    assert ds.select(ids).values("ground_truth.label") == before

    accept_labels(mistakes, "bifta", "ground_truth", overwrite=True)
    view = ds.select(ids)
    assert view.values("ground_truth.label") == view.values("bifta.label")


def test_runner_up(ds):
    sample = ds.match(F("name") == "cat4").first()  # dog 0.95, then fox
    result = accept_labels(
        ds.select(sample.id), "bifta", "ground_truth", overwrite=True,
        runner_up=True,
    )  # fmt: skip
    assert result.accepted == 1
    sample.reload()
    assert sample.ground_truth.label == "fox"
    # the runner-up's own probability (5%) is what the threshold sees
    result = accept_labels(
        ds.select(sample.id), "bifta", "ground_truth", overwrite=True,
        runner_up=True, min_confidence=0.5,
    )  # fmt: skip
    assert result.below_threshold == 1 and result.accepted == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(from_field="nope", to_field="gt"), "no field 'nope'"),
        (dict(from_field="bifta", to_field="bifta"), "must differ"),
        (dict(from_field="bifta", to_field="name"), "not an fo.Classification"),
        (
            dict(from_field="bifta", to_field="gt", min_confidence=1.5),
            "min_confidence",
        ),
    ],
)
def test_bad_input_is_named(ds, kwargs, message):
    with pytest.raises(ValueError, match=message):
        accept_labels(ds, **kwargs)


def test_split_classes_splits_pasted_chips():
    assert split_classes(["Coat, Dress, Shirt", "  ", "Bag\nSandal"]) == [
        "Coat", "Dress", "Shirt", "Bag", "Sandal",
    ]  # fmt: skip
    assert split_classes("a, ,b") == ["a", "b"]
    assert split_classes(None) == []


def test_classification_label_only(ds):
    accept_labels(ds, "bifta", "accepted")
    label = ds.exists("accepted").first().accepted
    assert isinstance(label, fo.Classification) and label.logits is None
