"""The panels' annotator fixes, with a real ExecutionContext (no App):
typed inputs are not echoed, sidebar filters and the panel's own views keep
the metrics, 0% classes get a bar, accepting labels writes the database."""

import pytest

from fiftyone import ViewField as F

from bifta_plugin.ui import panels as bp
from test_analysis import CLASSES
from test_panels import Session, make_panel
from test_panels import ds  # noqa: F401 (fixture)

pytestmark = pytest.mark.fiftyone


@pytest.fixture
def session(ds):  # noqa: F811
    s = Session(make_panel(bp.MispredictionsPanel), ds)
    s.event("on_load")
    return s


def _patched_keys(session):
    keys = set()
    for params in session.requests("patch_panel_state"):
        keys |= set(params["state"])
    return keys


def test_typed_search_is_not_echoed(session):
    session.event("on_change_search", value="o", path="filters.search")
    assert "filters.search" not in _patched_keys(session)
    assert len(session.data()["confusion_matrix"]["x"]) == 3  # dog fox owl
    (patch,) = [
        p for p in session.requests("patch_panel_state")
        if "num_classes_shown" in p["state"]
    ]  # fmt: skip
    assert patch["state"]["num_classes_shown"] == 3


def test_sidebar_filter_changes_nothing(session):
    session.request["filters"] = {"bifta.confidence": {"range": [0.6, 1]}}
    session.event("on_change_view")
    assert session.requests("patch_panel_data") == []
    assert session.requests("set_view") == []
    assert session.requests("clear_view") == []


def test_filter_after_all_mistakes_keeps_the_metrics(session, ds):  # noqa: F811
    before = dict(session.state["metrics"])
    session.event("show_mistakes")
    mistakes = session.app_set_view()
    session.event("on_change_view")
    # the user filters the panel's view: sidebar filter, then a stage
    session.request["filters"] = {"bifta.confidence": {"range": [0.6, 1]}}
    session.event("on_change_view")
    refined = mistakes.match(F("bifta.confidence") > 0.6)
    session.request["view"] = refined._serialize()
    session.event("on_change_view")
    assert session.state["metrics"] == before
    assert session.state["showing"] == "all mistakes"


def test_zero_accuracy_class_has_a_clickable_bar():
    rows = [
        bp.analysis.ClassAccuracy("pear", 5, 0, 0.0),
        bp.analysis.ClassAccuracy("fig", 4, 2, 0.5),
    ]
    trace = bp._accuracy_trace(rows)
    assert trace["x"] == ["pear", "fig"]
    assert trace["y"][0] >= bp.MIN_BAR > 0  # visible, so clickable
    assert trace["customdata"] == [0.0, 0.5]  # the hover tells the truth
    assert trace["marker"]["color"][0] != trace["marker"]["color"][1]


def test_pairs_table_is_capped(session, monkeypatch):
    monkeypatch.setattr(bp, "MAX_PAIR_ROWS", 2)
    session.event("reset_view")
    assert len(session.state["pairs"]) == 2
    assert session.state["num_pairs_total"] == 3
    session.event("on_pair_action", row=1)
    assert session.requests("set_view")


def test_accept_view_into_ground_truth(session, ds):  # noqa: F811
    unlabeled = ds.match(F("ground_truth").exists() == False)  # noqa: E712
    ids = unlabeled.exists("bifta").values("id")
    assert ids
    session.state["accept"] = {"accept_min_confidence": 0.0}
    session.event("accept_view")
    (note,) = session.requests("notify")
    assert f"{len(ids)} labels were written to 'ground_truth'" in note["message"]
    view = ds.select(ids)
    assert view.values("ground_truth.label") == view.values("bifta.label")


def test_explanation_accepts_the_runner_up(ds):  # noqa: F811
    ds.default_classes = CLASSES
    sample = ds.match(F("name") == "cat4").first()  # dog, runner-up fox
    s = Session(make_panel(bp.ExplanationPanel), ds, current_sample=sample.id)
    s.event("on_load")
    s.event("accept_runner_up")
    sample.reload()
    assert sample.ground_truth.label == "fox"
    assert "**Ground truth** `fox` (mistake)" in s.state["explanation"]
    s.event("accept_prediction")
    sample.reload()
    assert sample.ground_truth.label == "dog"
    assert len(ds.match(F("ground_truth.label") == "dog")) >= 1


def test_explanation_draws_the_best_crop_only(ds):  # noqa: F811
    import fiftyone as fo

    sample = ds.match(F("name") == "cat4").first()
    sample["bifta_crops"] = fo.Detections(
        detections=[
            fo.Detection(label="best", bounding_box=[0, 0, 1, 1], best=True),
            fo.Detection(label="crop", bounding_box=[0, 0, 1, 1], best=False),
            fo.Detection(label="crop", bounding_box=[0, 0, 1, 1], best=False),
        ]
    )
    sample.save()
    s = Session(make_panel(bp.ExplanationPanel), ds, current_sample=sample.id)
    s.event("on_load")
    view = s.app_set_view()
    assert len(view) == len(ds)  # no sample leaves the view
    assert view.count("bifta_crops.detections") == 1
    # the user's view stays underneath; opening again adds nothing
    s.event("on_load")
    assert s.requests("set_view") == []
    s.event("show_crops", value="all")
    assert s.app_set_view().count("bifta_crops.detections") == 3


def test_precision_recall_and_outcome_histogram(session, ds):  # noqa: F811
    rows = {r["label"]: r for r in session.state["class_metrics"]}
    # cat: 6 evaluated, 3 right; predicted cat: cat1-3 and dog5
    assert rows["cat"]["recall"] == "50.0%"
    assert rows["cat"]["precision"] == "75.0%"
    assert session.state["class_metrics"][0]["label"] == "cat"  # lowest
    right, wrong = session.data()["confidence_by_outcome"]
    assert (right["name"], wrong["name"]) == ("correct", "wrong")
    summary = session.state["metrics"]
    assert sum(right["y"]) == summary["num_correct"]
    assert sum(wrong["y"]) == summary["num_mistakes"]
    session.event("on_histogram_click", idx=19)  # confidence [0.95, 1]
    assert len(session.app_set_view()) == right["y"][19] + wrong["y"][19]


def test_no_empty_hint_before_the_first_load(ds):  # noqa: F811
    import json

    s = Session(make_panel(bp.MispredictionsPanel), ds)
    s.event("render")  # the first render: the state has no mode yet
    out = json.dumps(s.panel.render(s.ctx).to_json())
    assert "Loading" in out and "run_bifta" not in out


def _add_run(ds, key, label_field, stamp, accuracy=None):  # noqa: F811
    """A second prediction field and its run record, as a run written by
    another process would leave them."""
    import fiftyone as fo
    from bifta_plugin.sdk import records as runs

    for sample in ds.iter_samples(autosave=True):
        sample[label_field] = fo.Classification(label="cat", confidence=0.6)
    runs.register_bifta_run(ds, key, {
        "method": "clip", "label_field": label_field, "fields": {"label": label_field},
        "classes": CLASSES, "gt_field": "ground_truth", "timestamp": stamp,
        "model_name": "RN50", "status": "completed",
        "results": {"accuracy": accuracy, "num_samples": len(ds)},
    })


def test_a_new_run_is_offered_then_switched_to(session, ds):  # noqa: F811
    """A run written elsewhere while the panel is open: the next timer tick
    lists it and offers it; nothing else changes until "Switch to it"."""
    metrics = dict(session.state["metrics"])
    session.event("on_poll")
    assert session.requests("patch_panel_state") == []  # idle: no writes
    _add_run(ds, "later", "later_pred", "2999-01-01T00:00:00", accuracy=0.25)
    session.event("on_poll")
    assert session.state["new_run"]["key"] == "later"
    assert [r["key"] for r in session.state["runs"]][0] == "later"
    assert session.state["runs"][0]["accuracy"] == "25.0%"
    assert session.state["metrics"] == metrics
    assert session.state["fields"]["pred_field"] == "bifta"
    session.event("switch_to_new_run")
    assert session.state["fields"]["pred_field"] == "later_pred"
    assert session.state["new_run"] is None
    assert session.state["metrics"]["num_correct"] == len(
        ds.match(F("ground_truth.label") == "cat"))


def test_run_list_row_switches_the_panel(session, ds):  # noqa: F811
    _add_run(ds, "other", "other_pred", "1999-01-01T00:00:00")
    _add_run(ds, "newer", "newer_pred", "2000-01-01T00:00:00")
    session.event("on_poll")
    keys = [r["key"] for r in session.state["runs"]]
    assert keys == ["newer", "other"]  # newest first
    session.event("on_run_action", row=1)
    assert session.state["fields"] == {"pred_field": "other_pred", "gt_field": "ground_truth"}
    session.event("on_run_action", row=0)
    assert session.state["fields"]["pred_field"] == "newer_pred"
