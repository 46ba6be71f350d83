"""accept_labels' runner-up option on a real dataset (tests/test_analysis.py's
ROWS), and the class-chip splitting of the run form."""

import pytest

from fiftyone import ViewField as F

from bifta_plugin.sdk.accept import accept_labels
from bifta_plugin.ui.classes_form import split_classes
from test_analysis import CLASSES, build_dataset

pytestmark = pytest.mark.fiftyone


@pytest.fixture
def ds(fo_dataset):
    ds = build_dataset(fo_dataset)
    ds.default_classes = CLASSES
    return ds


def test_runner_up(ds):
    sample = ds.match(F("name") == "cat4").first()  # dog 0.95, then fox
    one = ds.select(sample.id)
    result = accept_labels(
        one, "bifta", "ground_truth", overwrite=True, runner_up=True
    )
    assert result.num_written == 1 and result.num_overwritten == 1
    sample.reload()
    assert sample.ground_truth.label == "fox"
    assert sample.ground_truth.confidence == pytest.approx(0.05, abs=1e-4)
    # the runner-up's own probability is what min_confidence sees
    result = accept_labels(
        one, "bifta", "ground_truth", overwrite=True, runner_up=True,
        min_confidence=0.5,
    )  # fmt: skip
    assert result.num_below_confidence == 1 and result.num_written == 0


def test_runner_up_needs_logits_and_classes(ds):
    ds.default_classes = []
    result = accept_labels(ds, "bifta", "runner", runner_up=True)
    assert result.num_written == 0
    assert not ds.has_sample_field("runner") or not len(ds.exists("runner"))


def test_split_classes_splits_pasted_chips():
    assert split_classes(["Coat, Dress, Shirt", "  ", "Bag\nSandal"]) == [
        "Coat", "Dress", "Shirt", "Bag", "Sandal",
    ]  # fmt: skip
    assert split_classes("a, ,b") == ["a", "b"]
    assert split_classes(None) == []
