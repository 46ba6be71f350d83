"""How often the panels read the dataset's run records.

Counting wrappers around FiftyOne's real ``has_run`` / ``list_runs`` /
``get_run_info`` (on ``SampleCollection``, so datasets and views both count)
on a real dataset with four BiFTA runs; the panels are driven like the App
drives them (tests/test_panels.py's ``Session``).
"""

import collections

import pytest

import fiftyone.core.collections as foc
from fiftyone import ViewField as F

from bifta_plugin.sdk import records as runs
from bifta_plugin.ui import panels as bp
from test_analysis import CLASSES, build_dataset
from test_panels import Session, make_panel

pytestmark = pytest.mark.fiftyone

NUM_RUNS = 4
RUN_READS = ("has_run", "list_runs", "get_run_info")


@pytest.fixture
def ds(fo_dataset):
    """The ROWS dataset with four BiFTA runs; the newest wrote ``bifta``."""
    ds = build_dataset(fo_dataset)
    for i in range(NUM_RUNS):
        field = "bifta" if i == NUM_RUNS - 1 else f"bifta_{i}"
        if field != "bifta":
            ds.clone_sample_field("bifta", field)
        runs.register_bifta_run(
            ds,
            f"run{i}",
            {
                "method": "bifta",
                "label_field": field,
                "fields": {"label": field, "crops": f"{field}_crops"},
                "classes": CLASSES,
                "gt_field": "ground_truth",
                "timestamp": f"2025-01-0{i + 1}T00:00:00",
            },
        )
    return ds


@pytest.fixture
def reads(monkeypatch):
    """Counter of run-record reads, by method name."""
    counts = collections.Counter()
    for name in RUN_READS:
        real = getattr(foc.SampleCollection, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(foc.SampleCollection, name, counted)
    return counts


def test_explanation_panel_reads_runs_once_per_load(ds, reads):
    first = ds.match(F("name") == "cat4").first()
    s = Session(make_panel(bp.ExplanationPanel), ds, current_sample=first.id)
    s.event("on_load")
    print("explanation on_load:", dict(reads))
    assert reads["list_runs"] <= 1
    assert reads["get_run_info"] <= NUM_RUNS
    assert reads["has_run"] == 0
    assert s.state["explanation"] and "`dog`" in s.state["explanation"]
    assert "**Runner-up** `fox`" in s.state["explanation"]  # run classes used

    reads.clear()
    for name in ("owl1", "dog5", "cat1"):
        s.request["current_sample"] = ds.match(F("name") == name).first().id
        s.event("on_change_current_sample")
        print(f"explanation sample change ({name}):", dict(reads))
        assert sum(reads.values()) == 0, dict(reads)
        assert s.state["explanation"]
    assert "**Ground truth** `cat` (correct)" in s.state["explanation"]


def test_mispredictions_panel_reads_runs_once_per_load(ds, reads):
    s = Session(make_panel(bp.MispredictionsPanel), ds)
    s.event("on_load")
    print("mispredictions on_load:", dict(reads))
    assert reads["list_runs"] <= 1
    assert reads["get_run_info"] <= NUM_RUNS
    assert reads["has_run"] == 0
    assert s.state["fields"] == {
        "pred_field": "bifta",
        "gt_field": "ground_truth",
    }
    reads.clear()
    s.event("on_matrix_click", x="dog", y="cat")
    s.event("on_change_search", value="o", path="filters.search")
    print("mispredictions click + search:", dict(reads))
    assert sum(reads.values()) == 0, dict(reads)
    # another prediction field: resolved again, from one snapshot
    s.event("on_change_pred_field", value="bifta_0", path="fields.pred_field")
    print("mispredictions pred field change:", dict(reads))
    assert reads["list_runs"] <= 1
    assert reads["get_run_info"] <= NUM_RUNS
    assert s.state["fields"]["gt_field"] == "ground_truth"


def test_snapshot_answers_from_memory(ds, reads, fo_dataset):
    ds.register_run("not_ours", ds.init_run(tool="other"))
    reads.clear()
    records = runs.RunRecords.load(ds)
    assert reads == {"list_runs": 1, "get_run_info": NUM_RUNS + 1}
    reads.clear()
    assert records.keys == [f"run{i}" for i in range(NUM_RUNS)]
    assert records.latest() == "run3"
    assert "run1" in records and "not_ours" not in records
    assert records.runs_for_field("bifta_1_crops") == ["run1"]
    assert records.runs_for_field("bifta") == ["run3"]
    info = records.info("run2")
    assert [i["key"] for i in records.infos()] == records.keys
    assert sum(reads.values()) == 0  # every answer came from memory
    assert info == runs.get_bifta_run_info(ds, "run2")
    info["fields"]["label"] = "changed"  # a copy: the snapshot is unchanged
    assert records.info("run2")["fields"]["label"] == "bifta_2"
    with pytest.raises(ValueError, match="not a BiFTA run.*run0"):
        records.info("not_ours")
    assert runs.RunRecords.load(fo_dataset()).keys == []


def test_resolve_prediction_fields_from_one_snapshot(ds, reads, fo_dataset):
    from bifta_plugin.sdk import analysis as ba

    records = runs.RunRecords.load(ds)
    reads.clear()
    fields = ba.resolve_prediction_fields(ds, records=records)
    assert fields == ba.PredictionFields(
        pred_field="bifta",
        gt_field="ground_truth",
        crops_field="bifta_crops",
        classes=CLASSES,
    )
    other = ba.resolve_prediction_fields(ds, "bifta_1", records=records)
    assert other.crops_field == "bifta_1_crops"
    assert sum(reads.values()) == 0
    assert ba.resolve_prediction_fields(fo_dataset()) is None
