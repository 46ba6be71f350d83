"""The calibration panel and the pre-label operator in the real App.

Same machinery as tests/test_browser.py (its server, page and helper
fixtures; this module's own dataset): a BiFTA prediction field, ground
truth on 12 of the 20 samples, a saved calibration. With
``BIFTA_UPDATE_SCREENSHOTS=1`` the panel screenshot is copied to
``docs/images/calibration_panel.png`` (the README's).
"""

import os
import shutil
import time
import uuid

import pytest

import fiftyone as fo

from test_browser import (  # noqa: F401 (fixtures)
    LOAD_TIMEOUT,
    NUM_SAMPLES,
    REPO_ROOT,
    _write_images,
    app_server,
    dismiss_popups,
    open_dataset,
    page,
    shot,
)

pytestmark = [pytest.mark.browser, pytest.mark.fiftyone, pytest.mark.slow]

DOCS_SCREENSHOT = os.path.join(REPO_ROOT, "docs", "images", "calibration_panel.png")
#: (prediction, confidence, ground truth or None), NUM_SAMPLES rows
ROWS = [
    ("cat", 0.97, "cat"), ("cat", 0.93, "cat"), ("cat", 0.90, "cat"), ("cat", 0.71, "dog"),
    ("cat", 0.62, "cat"), ("dog", 0.95, "dog"), ("dog", 0.91, "dog"), ("dog", 0.88, "dog"),
    ("dog", 0.55, "cat"), ("dog", 0.52, "fox"), ("fox", 0.80, "fox"), ("fox", 0.40, "dog"),
    ("cat", 0.96, None), ("cat", 0.58, None), ("dog", 0.93, None), ("dog", 0.50, None),
    ("fox", 0.85, None), ("fox", 0.30, None), ("cat", 0.99, None), ("dog", 0.60, None),
]  # fmt: skip
assert len(ROWS) == NUM_SAMPLES


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    from bifta_plugin.sdk import calibration as bc

    fo.config.show_progress_bars = False
    name = "bifta-prelabel-browser-" + uuid.uuid4().hex[:8]
    ds = fo.Dataset(name, persistent=True)
    paths = _write_images(tmp_path_factory.mktemp("prelabel_images"), len(ROWS))
    samples = []
    for path, (pred, conf, gt) in zip(paths, ROWS):
        sample = fo.Sample(filepath=path, bifta=fo.Classification(label=pred, confidence=conf))
        if gt:
            sample["ground_truth"] = fo.Classification(label=gt)
        samples.append(sample)
    ds.add_samples(samples)
    cal = bc.calibrate(ds, "bifta", "ground_truth", target=0.8, rule="point", min_accepted=2)
    bc.save_calibration(ds, "bifta_calibration", cal)
    yield ds
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_calibration_panel_shows_the_curve(app_server, app_dataset, page):
    base_url, _, _ = app_server
    open_dataset(page, base_url, app_dataset)
    dismiss_popups(page)
    page.locator('[title="New panel"]').first.click()
    page.get_by_text("BiFTA calibration", exact=True).click()
    page.get_by_text("labelled samples, target 80%").first.wait_for(timeout=LOAD_TIMEOUT)
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for(timeout=LOAD_TIMEOUT)
    page.wait_for_timeout(1500)  # plotly layout settles
    # the band (2 traces), the curve, the target line, the class markers
    assert plot.locator(".scatterlayer .trace").count() == 5
    assert plot.locator(".gtitle").first.text_content().startswith("Precision vs coverage")
    assert page.get_by_text("all (per-class)").count() >= 1  # the table
    path = shot(page, "10_calibration_panel.png")
    if os.environ.get("BIFTA_UPDATE_SCREENSHOTS") == "1":
        os.makedirs(os.path.dirname(DOCS_SCREENSHOT), exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)


def test_prelabel_operator_shows_the_plan_then_runs(app_server, app_dataset, page):
    from bifta_plugin.sdk import prelabel as bp

    base_url, _, _ = app_server
    ds = app_dataset
    expected = bp.plan_prelabel(ds, "bifta_calibration")
    assert 0 < expected.num_accepted < expected.num_samples == 8
    open_dataset(page, base_url, ds)
    dismiss_popups(page)
    page.keyboard.press("`")
    page.keyboard.type("pre-label with")
    page.get_by_text("BiFTA: pre-label with calibrated thresholds").first.click()
    plan = page.get_by_text("samples will be auto-accepted at an estimated")
    plan.first.wait_for(timeout=LOAD_TIMEOUT)
    assert plan.first.inner_text().strip() == expected.message()
    shot(page, "11_prelabel_plan.png")

    page.get_by_role("button", name="Execute").first.click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ds.reload()
        if ds.get_field("prelabel") is not None and len(ds.exists("prelabel")):
            break
        time.sleep(0.5)
    assert len(ds.exists("prelabel")) == expected.num_accepted
    assert ds.count_sample_tags().get("needs_review") == expected.num_review
    page.get_by_text("were auto-accepted").first.wait_for(timeout=LOAD_TIMEOUT)
    shot(page, "12_prelabel_done.png")
