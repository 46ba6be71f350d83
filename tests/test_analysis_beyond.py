"""The panels' SDK views (sdk.analysis) on patches and frames results: the
fields a panel resolves on to_patches() / to_frames() views, the confusion
matrix over objects / frames, and the view a clicked cell loads."""

import shutil
import subprocess

import numpy as np
import pytest

import fiftyone as fo

from bifta_plugin.sdk import analysis
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions, TargetSpec
from bifta_plugin.sdk.run import run_bifta

CLASSES = ["cat", "astronaut", "coffee"]
FAST = dict(num_candidates=4, max_views=4)
DESCRIPTIONS = {c: [f"a photo of a {c}"] for c in CLASSES}


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


def _run(samples, encoder, output, **target):
    return run_bifta(
        samples, CLASSES, DESCRIPTIONS, method="bifta", encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(num_workers=0), output=output, target=TargetSpec(**target), **FAST,
    )


def _check_report_and_cells(view, pred, gt):
    report = analysis.build_report(view, pred, gt)
    preds, truth = view.values([f"{pred}.label", f"{gt}.label"])
    pairs = [(t, p) for t, p in zip(truth, preds) if t is not None and p is not None]
    assert report.summary.num_evaluated == len(pairs)
    assert report.summary.accuracy == pytest.approx(np.mean([t == p for t, p in pairs]))
    matrix = report.matrix
    assert int(np.asarray(matrix.matrix).sum()) == len(pairs)
    t, p = pairs[0]
    cell = analysis.cell_view(view, pred, gt, t, p)
    assert len(cell) == sum(1 for pair in pairs if pair == (t, p))
    assert set(cell.values(f"{gt}.label")) == {t} and set(cell.values(f"{pred}.label")) == {p}
    return cell


def test_patches_results_in_the_panel_views(fo_dataset, sample_images, encoder):
    ds = fo_dataset()
    ds.add_samples([
        fo.Sample(filepath=path, objects=fo.Detections(detections=[
            fo.Detection(label=label, bounding_box=[0.1, 0.1, 0.5, 0.5],
                         gt=fo.Classification(label=label)),
            fo.Detection(label="cat", bounding_box=[0.4, 0.4, 0.5, 0.5],
                         gt=fo.Classification(label="cat")),
        ]))
        for path, label in sample_images[:3]
    ], dynamic=True)
    _run(ds, encoder, OutputSpec("bifta", gt_field="gt"), patches_field="objects",
         output_patches_field="pred")
    view = ds.to_patches("pred")
    fields = analysis.resolve_prediction_fields(view)
    assert fields.pred_field == "pred.bifta" and fields.gt_field == "pred.gt"
    assert fields.classes == CLASSES
    cell = _check_report_and_cells(view, fields.pred_field, fields.gt_field)
    assert cell._is_patches  # clicking a cell shows those patches


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_frames_results_in_the_panel_views(fo_dataset, tmp_path, encoder):
    path = tmp_path / "pattern.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=96x64:rate=5", "-t", "2", "-pix_fmt", "yuv420p", "-y",
                    str(path)], check=True)
    ds = fo_dataset()
    ds.add_sample(fo.Sample(filepath=str(path)))
    _run(ds, encoder, OutputSpec("bifta"), frame_step=3)
    sample = ds.first()
    for n, frame in sample.frames.items():
        frame["gt"] = fo.Classification(label="cat" if n < 5 else "coffee")
    sample.save()
    view = ds.to_frames(sample_frames=True, sparse=True, output_dir=str(tmp_path / "frames"))
    fields = analysis.resolve_prediction_fields(view)
    assert fields.pred_field == "bifta" and fields.gt_field == "gt"
    assert len(view) == 4
    cell = _check_report_and_cells(view, fields.pred_field, fields.gt_field)
    assert cell._is_frames  # clicking a cell shows those frames


def test_mispredictions_panel_on_a_patches_view(fo_dataset, sample_images, encoder):
    """The real panel, driven like the App (tests/test_panels.py's Session),
    with the App on to_patches(C): objects in the matrix, a cell shows patches."""
    from test_panels import Session, make_panel

    from bifta_plugin.ui import panels

    ds = fo_dataset()
    ds.add_samples([
        fo.Sample(filepath=path, objects=fo.Detections(detections=[
            fo.Detection(label=label, bounding_box=[0.1, 0.1, 0.5, 0.5],
                         gt=fo.Classification(label=label)),
            fo.Detection(label="cat", bounding_box=[0.4, 0.4, 0.5, 0.5],
                         gt=fo.Classification(label="cat")),
        ]))
        for path, label in sample_images[:3]
    ], dynamic=True)
    _run(ds, encoder, OutputSpec("bifta", gt_field="gt"), patches_field="objects",
         output_patches_field="pred")
    patches = ds.to_patches("pred")
    session = Session(make_panel(panels.MispredictionsPanel), ds, view=patches._serialize())
    session.event("on_load")
    state = session.state
    assert state["fields"] == {"pred_field": "pred.bifta", "gt_field": "pred.gt"}
    assert state["mode"] == "gt" and state["metrics"]["num_samples"] == 6  # objects
    preds, truth = patches.values(["pred.bifta.label", "pred.gt.label"])
    gt, pred = truth[0], preds[0]
    session.event("on_matrix_click", x=pred, y=gt)
    view = session.app_set_view()
    assert view._is_patches
    assert len(view) == sum(1 for t, p in zip(truth, preds) if (t, p) == (gt, pred))
