"""Runs in the real App (headless chromium): the run form's estimate, the
sidebar group of the latest run, the run-info table, the panel's run list
and its notice of a run written by the SDK while it is open, and the user's
filter kept across a run started from the App.

A small dataset of real photos gets real runs of the tiny test model
(random weights: the labels are meaningless, the records and fields are
real), served by the App server of tests/test_browser.py.
"""

import os
import re
import uuid

import pytest

import fiftyone as fo
from fiftyone import ViewField as F

from bifta_plugin.sdk import records as runs
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions
from test_browser import (  # noqa: F401 (fixtures)
    LOAD_TIMEOUT,
    SCREENSHOTS,
    _write_images,
    app_server,
    dismiss_popups,
    page,
    sync_api,
)
from test_browser_annotator import click_button, input_after, shot, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.fiftyone, pytest.mark.slow]

DOCS_IMAGES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images"
)
LABELS = ["cat", "astronaut", "coffee", "rocket"]  # _write_images' photo order
NUM_SAMPLES = 8


def _run(ds, label_field, tiny_model_name, **output):
    from bifta_plugin.sdk import run as api

    return api.run_bifta(
        ds, LABELS, method="clip",
        encoder=EncoderSpec(tiny_model_name, pretrained=None, device="cpu"),
        runtime=RunOptions(num_workers=0),
        output=OutputSpec(label_field, gt_field="ground_truth", **output),
    )  # fmt: skip


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory, tiny_model_name):
    """Served by test_browser's ``app_server`` (which requests this name):
    one real run, "zs"."""
    fo.config.show_progress_bars = False
    name = "bifta-runs-" + uuid.uuid4().hex[:8]
    ds = fo.Dataset(name, persistent=True)
    paths = _write_images(tmp_path_factory.mktemp("run_images"), NUM_SAMPLES)
    ds.add_samples([
        fo.Sample(filepath=p, ground_truth=fo.Classification(label=LABELS[i % 4]))
        for i, p in enumerate(paths)
    ])  # fmt: skip
    _run(ds, "zs", tiny_model_name)
    yield ds
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def open_app(page, base_url, ds):
    for _ in range(3):
        page.goto(f"{base_url}/datasets/{ds.name}")
        try:
            page.get_by_text(re.compile(r"^\d+ samples$")).first.wait_for(
                timeout=LOAD_TIMEOUT
            )
            dismiss_popups(page)
            return
        except sync_api.TimeoutError:
            continue
    pytest.fail("the App did not show the dataset's grid")


def open_run_form(page):
    page.keyboard.press("`")
    page.keyboard.type("zero-shot")
    page.get_by_text("BiFTA: zero-shot classify").first.click()
    page.get_by_text("The classes to choose from").first.wait_for(timeout=LOAD_TIMEOUT)


def choose_method(page, label):
    page.get_by_text("BiFTA: crops + refined descriptions").first.click()
    page.get_by_role("option", name=label).first.click()


def sidebar_groups(page):
    """The sidebar's group names, top to bottom."""
    groups = page.locator('[data-cy^="sidebar-group-"][data-cy$="-field"]')
    found = []
    for i in range(groups.count()):
        el = groups.nth(i)
        name = el.get_attribute("data-cy")[len("sidebar-group-"):-len("-field")]
        top = el.evaluate("e => parseFloat(e.style.top || '0')")
        found.append((top, name))
    return [name for _, name in sorted(found)]


def dump(page, name):
    shot(page, name + ".png")
    with open(os.path.join(SCREENSHOTS, name + ".html"), "w") as f:
        f.write(page.content())


# --- tests -------------------------------------------------------------------
def test_run_form_estimates_samples_and_time(app_server, app_dataset, page, tiny_model_name):
    """Before Execute the form says how many samples the run classifies and,
    from the throughput run "zs" recorded (same model and method), about
    how long; for another model it says there is no basis; with "skip
    existing" on zs's field it counts the samples already done."""
    base_url, _, _ = app_server
    ds = app_dataset
    rate = runs.get_bifta_run_info(ds, "zs")["results"]["images_per_s"]
    assert rate > 0
    open_app(page, base_url, ds)
    open_run_form(page)
    page.get_by_text(re.compile(
        r"8 samples to classify; no time estimate: no earlier bifta run of ViT-B-32"
    )).first.wait_for(timeout=LOAD_TIMEOUT)
    choose_method(page, "Plain CLIP ('a photo of a {}.')")
    input_after(page, "An open_clip model name").fill(tiny_model_name)
    estimate = page.get_by_text(re.compile(
        r"8 samples to classify; about \d+ (s|min) on cpu \(plus model loading\), "
        r"from the last run of this model on this dataset \('zs': "
    ))
    estimate.first.wait_for(timeout=LOAD_TIMEOUT)
    assert f"{rate:.3g} images/s" in estimate.first.inner_text()
    shot(page, "runs_form_estimate.png")
    input_after(page, "The fo.Classification field to write").fill("zs")
    page.get_by_text("Skip samples that already have a prediction").first.click()
    page.get_by_text(
        "0 samples to classify (8 already done, skipped): nothing to do"
    ).first.wait_for(timeout=LOAD_TIMEOUT)


def test_sidebar_leads_with_the_latest_scores(app_server, app_dataset, page, tiny_model_name):
    """The latest run's scores group is second in the sidebar (after the
    tags) and expanded; a newer run takes its place; deleting that run
    removes its group."""
    base_url, _, _ = app_server
    ds = app_dataset
    open_app(page, base_url, ds)
    page.locator('[data-cy="sidebar-group-zs_scores-field"]').wait_for(timeout=LOAD_TIMEOUT)
    assert sidebar_groups(page)[:2] == ["tags", "zs_scores"], sidebar_groups(page)
    assert page.locator('[data-cy="zs_scores.cat-field"]').is_visible()
    _run(ds, "zs2", tiny_model_name)
    try:
        open_app(page, base_url, ds)
        page.locator('[data-cy="sidebar-group-zs2_scores-field"]').wait_for(timeout=LOAD_TIMEOUT)
        groups = sidebar_groups(page)
        shot(page, "runs_sidebar.png")
        assert groups[:2] == ["tags", "zs2_scores"], groups
        assert "zs_scores" in groups
        assert page.locator('[data-cy="zs2_scores.cat-field"]').is_visible()
        assert not page.locator('[data-cy="zs_scores.cat-field"]').is_visible()  # collapsed
    finally:
        runs.delete_bifta_run(ds, "zs2")
    open_app(page, base_url, ds)
    page.locator('[data-cy="sidebar-group-zs_scores-field"]').wait_for(timeout=LOAD_TIMEOUT)
    groups = sidebar_groups(page)
    assert "zs2_scores" not in groups, groups


def test_run_info_is_a_short_table(app_server, app_dataset, page):
    """"BiFTA: get run info" shows a table of the run's main facts, not the
    record's JSON tree."""
    base_url, _, _ = app_server
    open_app(page, base_url, app_dataset)
    page.keyboard.press("`")
    page.keyboard.type("run info")
    page.get_by_text("BiFTA: get run info").first.click()
    page.get_by_text("The run to inspect").first.wait_for(timeout=LOAD_TIMEOUT)
    box = page.get_by_text("The run to inspect").first.locator(
        "xpath=following::*[@role='combobox'][1]")
    box.click()
    page.get_by_role("option", name="zs").first.click()
    page.get_by_role("button", name="Execute").first.click()
    table = page.locator("table").filter(has_text="Fields written")
    try:
        table.first.wait_for(timeout=LOAD_TIMEOUT)
    except sync_api.TimeoutError:
        dump(page, "failed_run_info")
        raise
    shot(page, "runs_info.png")
    text = table.first.inner_text()
    for label in ("Method", "Model", "Classes", "Samples", "Accuracy", "Date", "Duration"):
        assert label in text
    assert "clip" in text and "4: cat, astronaut, coffee, rocket" in text
    assert "package_version" not in page.locator("body").inner_text()


def _summary(page):
    return page.get_by_text("Accuracy").first.locator("xpath=..").inner_text()


def test_panel_run_list_and_a_new_run(app_server, app_dataset, page, tiny_model_name):
    """The panel lists the runs; a run the SDK writes while it is open is
    offered in a notice within seconds, and "Switch to it" shows it; a row
    of the run list switches back."""
    base_url, _, _ = app_server
    ds = app_dataset
    open_app(page, base_url, ds)
    page.locator('[title="New panel"]').first.click()
    page.get_by_text("BiFTA mispredictions", exact=True).click()
    page.get_by_text("Runs (newest first)").first.wait_for(timeout=LOAD_TIMEOUT)
    assert "zs vs ground_truth" in _summary(page)
    _run(ds, "zs3", tiny_model_name)
    try:
        notice = page.get_by_text(re.compile(r"New run available: zs3"))
        try:
            notice.first.wait_for(timeout=30_000)
        except sync_api.TimeoutError:
            dump(page, "failed_new_run")
            raise
        shot(page, "runs_new_run.png")
        assert "zs vs ground_truth" in _summary(page)  # nothing switched by itself
        click_button(page, "Switch to it")
        wait_until(lambda: "zs3 vs ground_truth" in _summary(page), 30)
        runs_table = page.locator("table").filter(has_text="zs3")
        runs_table.first.scroll_into_view_if_needed()
        dump(page, "runs_list")
        if os.environ.get("BIFTA_UPDATE_SCREENSHOTS") == "1":
            page.wait_for_timeout(500)  # the scroll settles (a picture only)
            runs_table.first.screenshot(path=os.path.join(DOCS_IMAGES, "run_list.png"))
        rows = runs_table.first.locator("tbody tr")
        assert rows.count() == 2
        assert "zs3" in rows.nth(0).inner_text() and "clip" in rows.nth(0).inner_text()
        rows.nth(1).get_by_role("button").last.click()
        wait_until(lambda: re.search(r"\bzs vs ground_truth", _summary(page)), 30)
    finally:
        runs.delete_bifta_run(ds, "zs3")


def test_filter_survives_a_run_from_the_app(app_server, app_dataset, page, tiny_model_name):
    """A sidebar filter set before a run started in the App is still set
    when the run has finished and the App shows its new field."""
    base_url, _, _ = app_server
    ds = app_dataset
    # a threshold halfway between two distinct confidences (the photos
    # repeat, so confidences come in equal pairs)
    distinct = sorted(set(ds.values("zs.confidence")))
    assert len(distinct) >= 2
    middle = len(distinct) // 2
    minimum = round((distinct[middle - 1] + distinct[middle]) / 2, 6)
    expected = len(ds.match(F("zs.confidence") >= minimum))
    assert 0 < expected < NUM_SAMPLES
    count = re.compile(rf"^{expected}( of {NUM_SAMPLES})? samples$")
    open_app(page, base_url, ds)
    page.get_by_text("zs", exact=True).first.click()
    box = page.get_by_placeholder("min").first
    box.fill(str(minimum))
    box.press("Enter")
    try:
        page.get_by_text(count).first.wait_for(timeout=LOAD_TIMEOUT)
    except sync_api.TimeoutError:
        dump(page, "failed_filter_before_run")
        raise
    open_run_form(page)
    page.get_by_text("Labels of an existing Classification field").first.click()
    field = page.get_by_text("Classify into the labels this field has anywhere in")
    field.first.locator("xpath=following::*[@role='combobox'][1]").click()
    page.get_by_role("option", name="ground_truth").first.click()
    choose_method(page, "Plain CLIP ('a photo of a {}.')")
    # the device box (an autocomplete) first: the next fill closes its list
    input_after(page, "auto, cpu, cuda").fill("cpu")
    input_after(page, "An open_clip model name").fill(tiny_model_name)
    input_after(page, "An open_clip tag").fill("none")
    input_after(page, "The fo.Classification field to write").fill("app_run")
    # the form's target is the App's current view: the filtered samples
    estimate = page.get_by_text(re.compile(r"^\d+ samples to classify; about"))
    try:
        estimate.first.wait_for(timeout=LOAD_TIMEOUT)
    except sync_api.TimeoutError:
        dump(page, "failed_filter_form")
        raise
    todo = int(estimate.first.inner_text().split()[0])
    page.get_by_role("button", name="Execute").first.click()
    try:
        page.get_by_text(f"Classified: {todo}").first.wait_for(timeout=120_000)
        page.keyboard.press("Escape")
        page.locator('[data-cy="sidebar-field-app_run"], [data-cy="app_run-field"]').first.wait_for(
            timeout=LOAD_TIMEOUT)
        # the operation has ended (it sets the filters again after the
        # App's reload, which clears them): the filter is set
        page.get_by_text("Executing...").first.wait_for(state="hidden", timeout=60_000)
        page.get_by_text(count).first.wait_for(timeout=10_000)
        shot(page, "runs_filter_after_run.png")
        assert page.get_by_placeholder("min").first.input_value() == str(minimum)
    except sync_api.TimeoutError:
        dump(page, "failed_filter_after_run")
        raise
    finally:
        if runs.is_bifta_run(ds, "app_run"):
            runs.delete_bifta_run(ds, "app_run")
