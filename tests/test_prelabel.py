"""Pre-label, accept into ground truth, export, and the best-crop display
field, against a real (test) MongoDB."""

import csv
import os

import numpy as np
import pytest

import fiftyone as fo

from bifta_plugin.sdk import accept as ba
from bifta_plugin.sdk import calibration as bc
from bifta_plugin.sdk import prelabel as bp
from test_calibration import calibration_dataset

pytestmark = pytest.mark.fiftyone


def _snapshot(ds):
    """Every sample's (id, sorted tags, pre-label, reason, label id)."""
    ids, tags, labels, reasons, label_ids = ds.values(
        ["id", "tags", "prelabel.label", "prelabel_reason", "prelabel.id"]
    )
    return sorted(zip(ids, [sorted(t) for t in tags], labels, reasons)), label_ids


@pytest.fixture
def calibrated(fo_dataset):
    """900 labelled samples (calibration) + 120 with predictions only."""
    ds = calibration_dataset(fo_dataset, n=900, unlabelled=120)
    cal = bc.calibrate(ds, "pred", "gt", target=0.8)
    bc.save_calibration(ds, "cal", cal)
    return ds, cal


def test_plan_then_prelabel_reasons_and_record(calibrated):
    ds, cal = calibrated
    gt_before = ds.values("gt")
    plan = bp.plan_prelabel(ds, "cal")
    assert plan.num_samples == 120  # labelled samples are left alone
    t_a, t_c = cal.classes["a"].threshold, cal.classes["c"].threshold
    unl = ds.exists("gt", False)
    labels, confs = unl.values(["pred.label", "pred.confidence"])
    expect_accept = sum(
        (lab == "a" and s >= t_a) or (lab == "c" and s >= t_c) for lab, s in zip(labels, confs)
    )
    assert plan.num_accepted == expect_accept > 0
    assert plan.reasons["no_threshold"] == labels.count("b") > 0
    assert plan.reasons["low_confidence"] == 120 - expect_accept - labels.count("b")
    msg = plan.message()
    assert f"{expect_accept} of 120 samples will be auto-accepted at an estimated" in msg
    assert f"{plan.num_review} go to review" in msg and "[" in msg
    assert "prelabel" not in ds.get_field_schema()  # the plan wrote nothing

    done = bp.prelabel(ds, "cal", out_field="prelabel")
    assert done.num_accepted == plan.num_accepted
    assert len(ds.exists("prelabel")) == plan.num_accepted
    counts = ds.count_sample_tags()
    assert counts["needs_review"] == plan.num_review
    assert counts["needs_review:no_threshold"] == plan.reasons["no_threshold"]
    assert counts["needs_review:low_confidence"] == plan.reasons["low_confidence"]
    assert sorted(ds.exists("prelabel_reason").distinct("prelabel_reason")) == [
        "low_confidence",
        "no_threshold",
    ]
    # accepted labels are the predictions; no sample is both accepted and tagged
    acc = ds.exists("prelabel")
    assert acc.values("prelabel.label") == acc.values("pred.label")
    assert not len(acc.match_tags("needs_review"))
    assert ds.values("gt") == gt_before  # ground truth untouched
    info = ds.get_run_info("prelabel_prelabel").config
    assert info.run_type == "bifta_prelabel" and info.calibration_key == "cal"
    assert info.thresholds["classes"]["a"] == t_a and info.target == 0.8
    assert info.results["num_accepted"] == plan.num_accepted


def test_prelabel_is_idempotent_and_replaces_its_own_tags(calibrated):
    ds, cal = calibrated
    ds.take(5, seed=1).tag_samples("someone_else")  # never touched
    bp.prelabel(ds, cal, out_field="prelabel")
    first, _ = _snapshot(ds)
    bp.prelabel(ds, cal, out_field="prelabel")
    again, _ = _snapshot(ds)
    assert again == first
    assert all(len(t) == len(set(t)) for _, t, _, _ in again)  # no duplicate tags
    assert bp.prelabel_runs_for_field(ds, "prelabel") == ["prelabel_prelabel"]
    # a stricter global threshold: previous tags and labels are replaced
    strict = bc.calibrate(ds, "pred", "gt", target=0.99)
    plan = bp.prelabel(ds, strict, out_field="prelabel", mode="global", review_tag="check")
    counts = ds.count_sample_tags()
    assert "needs_review" not in counts and "needs_review:low_confidence" not in counts
    assert counts["check"] == plan.num_review == 120 - plan.num_accepted
    assert counts["someone_else"] == 5
    assert len(ds.exists("prelabel")) == plan.num_accepted


def test_prelabel_refuses_fields_it_does_not_own(calibrated):
    ds, cal = calibrated
    with pytest.raises(ValueError, match="ground-truth"):
        bp.prelabel(ds, cal, out_field="gt")
    with pytest.raises(ValueError, match="prediction"):
        bp.prelabel(ds, cal, out_field="pred")
    ds.add_sample_field("mine", fo.StringField)
    with pytest.raises(ValueError, match="no pre-label run wrote it"):
        bp.prelabel(ds, cal, out_field="mine")
    with pytest.raises(ValueError, match="not a saved calibration"):
        bp.prelabel(ds, "nope")


def test_accept_labels_dry_run_overwrite_and_min_confidence(calibrated):
    ds, cal = calibrated
    bp.prelabel(ds, cal, out_field="prelabel")
    accepted = ds.exists("prelabel")
    n = len(accepted)
    # a conflicting and an agreeing existing ground-truth label
    ids = accepted.values("id")
    first, second = ds[ids[0]], ds[ids[1]]
    first["gt"] = fo.Classification(label="zzz")
    first.save()
    second["gt"] = fo.Classification(label=second.prelabel.label)
    second.save()

    dry = ba.accept_labels(ds, "prelabel", "gt", dry_run=True)
    assert (dry.num_candidates, dry.num_new, dry.num_conflicts, dry.num_same) == (n, n - 2, 1, 1)
    assert "would be written" in dry.message() and "differ and are kept" in dry.message()
    assert ds[ids[0]].gt.label == "zzz" and len(ds.exists("gt")) == 900 + 2

    res = ba.accept_labels(ds, "prelabel", "gt")
    assert res.num_written == n - 2 and res.num_overwritten == 0
    assert ds[ids[0]].gt.label == "zzz"  # not overwritten
    assert ds[ids[2]].gt.accepted_from == "prelabel"
    again = ba.accept_labels(ds, "prelabel", "gt")
    assert again.num_written == 0 and again.num_same == n - 1

    forced = ba.accept_labels(ds, "prelabel", "gt", overwrite=True)
    assert forced.num_overwritten == 1 and ds[ids[0]].gt.label == ds[ids[0]].prelabel.label

    confs = accepted.values("prelabel.confidence")
    cut = float(np.median(confs))
    other = ba.accept_labels(ds, "prelabel", "gt_new", min_confidence=cut)
    assert other.num_below_confidence == sum(c < cut for c in confs)
    assert len(ds.exists("gt_new")) == other.num_new == n - other.num_below_confidence
    with pytest.raises(ValueError, match="must differ"):
        ba.accept_labels(ds, "gt", "gt")
    with pytest.raises(ValueError, match="does not exist"):
        ba.accept_labels(ds, "missing", "gt")


def test_export_accepted_tree_csv_and_abstained(fo_dataset, sample_images, tmp_path):
    from bifta_plugin.sdk import export as bx

    ds = fo_dataset(sample_images[:3])
    ds.set_values("prelabel", [fo.Classification(label="cat", confidence=0.9), None, fo.Classification(label="coffee", confidence=0.8)])
    ds.set_values("prelabel_reason", [None, "small_margin", None])
    out = bx.export_accepted(ds, "prelabel", str(tmp_path / "out"))
    assert (out.num_accepted, out.num_abstained) == (2, 1)
    tree = sorted(os.listdir(out.paths["tree"]))
    assert tree == ["cat", "coffee"] and len(os.listdir(os.path.join(out.paths["tree"], "cat"))) == 1
    with open(out.paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == ["cat", "coffee"]
    assert all(os.path.isabs(r["filepath"]) and os.path.exists(r["filepath"]) for r in rows)
    with open(out.paths["abstained"]) as f:
        abst = list(csv.DictReader(f))
    assert abst == [{"filepath": ds.values("filepath")[1], "reason": "small_margin"}]
    with pytest.raises(ValueError, match="not empty"):
        bx.export_accepted(ds, "prelabel", str(tmp_path / "out"))


def _tiny_run(ds, tiny_model_name):
    """A BiFTA run with the tiny random model (crops on)."""
    from bifta_plugin.engine.encoders import create_encoder
    from bifta_plugin.sdk import run as api
    from bifta_plugin.sdk.options import split_options

    encoder = create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)
    flat = dict(instance=encoder, num_candidates=8, max_views=8, num_workers=0, batch_size=2)
    return api.run_bifta(
        ds, ["cat", "astronaut"], {"cat": ["a cat"], "astronaut": ["a space suit"]},
        **split_options(flat),
    )


def test_run_writes_the_best_crop_and_hides_the_crops(fo_dataset, sample_images, tiny_model_name):
    from bifta_plugin.sdk import records

    ds = fo_dataset(sample_images[:2])
    _tiny_run(ds, tiny_model_name)
    assert ds.get_field("bifta_best_crop").document_type is fo.Detection
    for sample in ds:
        best = [d for d in sample.bifta_crops.detections if d.best]
        assert len(best) == 1
        assert sample.bifta_best_crop.bounding_box == best[0].bounding_box
        assert sample.bifta_best_crop.description == best[0].description
        assert sample.bifta_best_crop.id != best[0].id
    active = ds.app_config.active_fields
    assert active.exclude and "bifta_crops" in active.paths and "bifta_best_crop" not in active.paths
    assert records.get_bifta_run_info(ds, "bifta")["fields"]["best_crop"] == "bifta_best_crop"
    deleted = records.delete_bifta_run(ds, "bifta")
    assert "bifta_best_crop" in deleted and ds.get_field("bifta_best_crop") is None


def test_a_foreign_best_crop_field_is_never_written(fo_dataset, sample_images, tiny_model_name):

    ds = fo_dataset(sample_images[:2])
    ds.set_values("bifta_best_crop", ["mine", "mine"])
    result = _tiny_run(ds, tiny_model_name)
    assert result.num_processed == 2
    assert ds.values("bifta_best_crop") == ["mine", "mine"]
