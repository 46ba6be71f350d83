"""The mispredictions panel in the real App on an object-patches run: the
App on a to_patches() view of the run's output, the matrix counts objects,
and a clicked cell shows exactly those patches in the grid.

The run is a real BiFTA patches run (tiny random model), so the predictions
are whatever it gave; the test reads them back from the database.
"""

import re
import uuid

import pytest

import fiftyone as fo

from bifta_plugin.sdk import analysis as ba
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions, TargetSpec
from bifta_plugin.sdk.run import run_bifta
from test_browser import (  # noqa: F401 (fixtures)
    LOAD_TIMEOUT,
    _write_images,
    app_server,
    click_cell,
    dismiss_popups,
    open_mispredictions_panel,
    page,
    shot,
)

pytestmark = [pytest.mark.browser, pytest.mark.fiftyone, pytest.mark.slow]

CLASSES = ["cat", "astronaut", "coffee"]
#: per image: (ground truth, box) of its objects
OBJECTS = [
    ("cat", [0.05, 0.05, 0.45, 0.5]), ("coffee", [0.5, 0.4, 0.45, 0.55]),
    ("astronaut", [0.2, 0.1, 0.6, 0.8]),
]  # fmt: skip
NUM_IMAGES = 4
NUM_OBJECTS = NUM_IMAGES * len(OBJECTS)
VIEW_NAME = "objects"


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory, tiny_model_name):
    """Served by test_browser's ``app_server`` (which requests this name)."""
    from bifta_plugin.engine.encoders import create_encoder

    fo.config.show_progress_bars = False
    name = "bifta-patches-" + uuid.uuid4().hex[:8]
    ds = fo.Dataset(name, persistent=True)
    paths = _write_images(tmp_path_factory.mktemp("images"), NUM_IMAGES)
    ds.add_samples(
        [
            fo.Sample(filepath=path, objects=fo.Detections(detections=[
                fo.Detection(label=gt, bounding_box=box, gt=fo.Classification(label=gt))
                for gt, box in OBJECTS
            ]))
            for path in paths
        ],
        dynamic=True,
    )
    encoder = create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)
    run_bifta(
        ds, CLASSES, {c: [f"a photo of a {c}"] for c in CLASSES}, method="bifta",
        encoder=EncoderSpec(instance=encoder), runtime=RunOptions(num_workers=0),
        output=OutputSpec("bifta", gt_field="gt"),
        target=TargetSpec(patches_field="objects", output_patches_field="pred"),
        num_candidates=4, max_views=4,
    )
    ds.save_view(VIEW_NAME, ds.to_patches("pred"))
    yield ds
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def grid_patches(page, count, timeout=LOAD_TIMEOUT):
    page.get_by_text(re.compile(rf"^{count} (patches|samples)$")).first.wait_for(timeout=timeout)


def test_panel_on_a_patches_view_counts_objects_and_a_cell_shows_its_patches(
    app_server, app_dataset, page
):
    base_url, _, _ = app_server
    ds = app_dataset
    patches = ds.load_saved_view(VIEW_NAME)
    truth, preds = patches.values(["pred.gt.label", "pred.bifta.label"])
    assert len(truth) == NUM_OBJECTS and None not in preds
    correct = sum(t == p for t, p in zip(truth, preds))
    gt, pred = truth[0], preds[0]
    in_cell = sum((t, p) == (gt, pred) for t, p in zip(truth, preds))
    classes = ba.build_confusion_matrix(patches, "pred.bifta", "pred.gt").classes

    page.goto(f"{base_url}/datasets/{ds.name}?view={VIEW_NAME}")
    grid_patches(page, NUM_OBJECTS)
    dismiss_popups(page)
    open_mispredictions_panel(page)
    # the metrics are over the objects of the patches view
    accuracy = f"{100 * correct / NUM_OBJECTS:.1f}% ({correct} / {NUM_OBJECTS})"
    page.get_by_text(accuracy).first.wait_for(timeout=LOAD_TIMEOUT)
    shot(page, "patches_01_panel.png")

    click_cell(page, classes, gt, pred)
    grid_patches(page, in_cell)
    page.get_by_text("Showing: ground truth").first.wait_for(timeout=LOAD_TIMEOUT)
    shot(page, "patches_02_cell.png")
    # the metrics stay on every object, not on the cell's
    assert page.get_by_text(accuracy).count() >= 1
