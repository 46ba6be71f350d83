"""The panels as an annotator uses them, in the real App (headless chromium).

A 10-class dataset (one class, ``pear``, always mispredicted) with 12 crops
per sample is served by the App server of tests/test_browser.py (same
fixtures: same database, same plugins dir). Each test drives one annotator
complaint end to end and reads its outcome from the page, the App's server
calls or the database.
"""

import os
import re
import shutil
import time
import uuid

import numpy as np
import pytest

import fiftyone as fo
from fiftyone import ViewField as F

from bifta_plugin.sdk import records as runs
from test_browser import (  # noqa: F401 (fixtures)
    LOAD_TIMEOUT,
    SCREENSHOTS,
    _write_images,
    app_server,
    dismiss_popups,
    page,
    sync_api,
)

pytestmark = [pytest.mark.browser, pytest.mark.fiftyone, pytest.mark.slow]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS_IMAGES = os.path.join(REPO_ROOT, "docs", "images")
CLASSES = [
    "apple", "apricot", "banana", "cherry", "grape",
    "lemon", "lime", "mango", "peach", "pear",
]  # fmt: skip
PER_CLASS = 5
NUM_SAMPLES = PER_CLASS * len(CLASSES)
NUM_CROPS = 12
#: ground truth -> prediction for the mistakes (by sample index in class)
CONFUSIONS = {"apple": "apricot", "lime": "lemon", "pear": "peach"}


def _truth_and_prediction(i):
    """(gt, pred, confidence) of sample ``i``: in each class the first
    sample is a mistake (every one for ``pear``), confidences spread over
    [0.45, 0.99]."""
    gt = CLASSES[i // PER_CLASS]
    k = i % PER_CLASS
    wrong = gt == "pear" or (gt in CONFUSIONS and k == 0) or (
        gt == "banana" and k < 2
    )
    pred = CONFUSIONS.get(gt, "cherry") if wrong else gt
    confidence = round(0.45 + 0.54 * ((i * 7) % NUM_SAMPLES) / NUM_SAMPLES, 3)
    return gt, pred, confidence


def _label(pred, confidence, runner):
    """A BiFTA-like prediction: softmax(logits) puts ``confidence`` on
    ``pred``, 70% of the rest on ``runner`` (below ``confidence`` for
    confidences from 0.45) and the remainder evenly on the other classes."""
    rest = 1 - confidence
    probs = np.full(len(CLASSES), 0.3 * rest / (len(CLASSES) - 2))
    probs[CLASSES.index(runner)] = 0.7 * rest
    probs[CLASSES.index(pred)] = confidence
    logits = np.log(probs)
    margin = confidence - float(np.sort(probs)[-2])
    return fo.Classification(
        label=pred,
        confidence=confidence,
        logits=logits.tolist(),
        margin=margin,
    )


def _crops(pred):
    dets = [
        fo.Detection(
            label="best",
            bounding_box=[0.25, 0.2, 0.4, 0.5],
            confidence=0.4,
            best=True,
            description=f"a {pred} with a glossy skin",
        )
    ]
    for j in range(NUM_CROPS - 1):
        x = 0.05 * (j % 6)
        dets.append(
            fo.Detection(
                label="crop",
                bounding_box=[x, 0.05 * (j // 6), 0.5, 0.5],
                confidence=round(0.3 - 0.02 * j, 3),
                best=False,
            )
        )
    return fo.Detections(detections=dets)


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """Served by test_browser's ``app_server`` (which requests this name)."""
    fo.config.show_progress_bars = False
    name = "bifta-annotator-" + uuid.uuid4().hex[:8]
    ds = fo.Dataset(name, persistent=True)
    paths = _write_images(tmp_path_factory.mktemp("images"), NUM_SAMPLES)
    samples = []
    for i, path in enumerate(paths):
        gt, pred, confidence = _truth_and_prediction(i)
        runner = gt if gt != pred else CLASSES[(CLASSES.index(gt) + 1) % 10]
        samples.append(
            fo.Sample(
                filepath=path,
                ground_truth=fo.Classification(label=gt),
                bifta=_label(pred, confidence, runner),
                bifta_crops=_crops(pred),
            )
        )
    ds.add_samples(samples)
    runs.register_bifta_run(
        ds,
        "bifta",
        {
            "method": "bifta",
            "label_field": "bifta",
            "fields": {"label": "bifta", "crops": "bifta_crops"},
            "classes": CLASSES,
            "gt_field": "ground_truth",
            "timestamp": "2025-01-01T00:00:00",
            "model_name": "ViT-B-32",
            "status": "completed",
            "results": {"accuracy": 0.78},
        },
    )
    yield ds
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


# --- helpers -----------------------------------------------------------------
def shot(page, name):
    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, name)
    page.screenshot(path=path)
    return path


def _describe(request):
    """operator#method(params) of an operator call, for failure messages."""
    try:
        body = request.post_data_json or {}
    except ValueError:
        return request.url
    params = body.get("params") or {}
    method = params.get("__method__", "")
    extra = {k: params[k] for k in ("value", "path") if k in params}
    return f"{body.get('operator_uri', request.url)}#{method} {extra}"


class ServerCalls:
    """Counts the App's operator calls (panel events included)."""

    def __init__(self, page):
        self.urls = []
        page.on("request", self._on_request)

    def _on_request(self, request):
        if "/operators/execute" in request.url:
            self.urls.append(_describe(request))

    def __len__(self):
        return len(self.urls)


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


def open_panel(page):
    """Opens the mispredictions panel, or reuses the one the App server
    kept open (it keeps its spaces across page loads), with an empty class
    filter and the whole dataset."""
    title = page.get_by_text("Confusion matrix (click a cell")
    try:
        title.first.wait_for(timeout=5000)
    except sync_api.TimeoutError:
        page.locator('[title="New panel"]').first.click()
        page.get_by_text("BiFTA mispredictions", exact=True).click()
        title.first.wait_for(timeout=LOAD_TIMEOUT)
    box = input_after(page, "Filter classes")
    if box.input_value():
        box.fill("")
        wait_until(lambda: " of " not in matrix_title(page)
                   or "10 of 10" in matrix_title(page))  # fmt: skip
    click_button(page, "Reset view")
    page.wait_for_timeout(1500)  # plotly layout settles


def wait_until(predicate, timeout_s=60):
    for _ in range(timeout_s * 2):
        if predicate():
            return
        time.sleep(0.5)
    assert predicate()


def restore_app(page, ds):
    """Undoes a test's sidebar filter and view: the App server keeps both
    for the next page."""
    reset = page.get_by_text("Reset", exact=True)
    for i in range(reset.count()):
        if reset.nth(i).is_visible():
            reset.nth(i).click()
    clear = page.get_by_text("Reset view", exact=True)
    if clear.count():
        clear.first.scroll_into_view_if_needed()
        clear.first.click()
    grid_count(page, len(ds))


def click_button(page, name):
    button = page.get_by_text(name, exact=True).first
    button.scroll_into_view_if_needed()
    button.click()


def grid_count(page, count, total=None, timeout=LOAD_TIMEOUT):
    """Waits for the grid's count: "N samples" (or "N of M samples")."""
    pattern = rf"^{count}( of {total})? samples$" if total else (
        rf"^{count} samples$"
    )
    page.get_by_text(re.compile(pattern)).first.wait_for(timeout=timeout)


def set_confidence_filter(page, minimum):
    """The sidebar's range filter on ``bifta.confidence`` (min only)."""
    box = page.get_by_placeholder("min").first
    if not box.count() or not box.is_visible():  # expand the field
        page.get_by_text("bifta", exact=True).first.click()
    box.fill(str(minimum))
    box.press("Enter")


def summary_text(page):
    return page.get_by_text("Accuracy").first.locator("xpath=..").inner_text()


def input_after(page, text):
    """The first input below the element showing ``text`` (its label)."""
    return page.get_by_text(text).first.locator("xpath=following::input[1]")


def matrix_title(page):
    return page.locator(".js-plotly-plot .gtitle").first.text_content()


# --- tests -------------------------------------------------------------------
def test_class_search_settles(app_server, app_dataset, page):
    """Typing in "Filter classes" filters the matrix once: no replayed
    keystrokes while idle, the box keeps what was typed, the title matches."""
    base_url, _, _ = app_server
    open_app(page, base_url, app_dataset)
    open_panel(page)
    box = input_after(page, "Filter classes")
    box.click()
    box.press_sequentially("ap", delay=250)
    page.get_by_text("3 of 10 classes").first.wait_for(timeout=LOAD_TIMEOUT)
    page.wait_for_timeout(3000)  # the debounced event and its render
    calls = ServerCalls(page)
    titles = set()
    for _ in range(10):  # 20 s idle
        page.wait_for_timeout(2000)
        titles.add(matrix_title(page))
        assert input_after(page, "Filter classes").input_value() == "ap"
    shot(page, "annotator_search.png")
    replays = [u for u in calls.urls if "#on_change_search" in u]
    assert replays == [], calls.urls
    assert titles == {
        "Confusion matrix (click a cell: its samples) - 3 of 10 classes"
    }


def test_sidebar_filter_survives_the_open_panel(app_server, app_dataset, page):
    """A sidebar range filter set while the panel is open stays set (the
    panel never resets the App's view or filters by itself)."""
    base_url, _, _ = app_server
    ds = app_dataset
    expected = len(ds.match(F("bifta.confidence") >= 0.6))
    assert 0 < expected < NUM_SAMPLES
    open_app(page, base_url, ds)
    open_panel(page)
    try:
        set_confidence_filter(page, 0.6)
        grid_count(page, expected, NUM_SAMPLES)
        page.wait_for_timeout(8000)
        shot(page, "annotator_filter.png")
        grid_count(page, expected, NUM_SAMPLES, timeout=2000)
        assert page.get_by_placeholder("min").first.input_value() == "0.6"
        # the filter is no reason to recompute: metrics are the run's
        assert "82.0% (41 / 50)" in summary_text(page)
    finally:
        restore_app(page, ds)


def test_filter_after_all_mistakes_keeps_the_metrics(
    app_server, app_dataset, page
):
    """"All mistakes", then a sidebar filter: the panel keeps reporting the
    run's accuracy and per-class bars, not the metrics of its own view."""
    base_url, _, _ = app_server
    ds = app_dataset
    open_app(page, base_url, ds)
    open_panel(page)
    try:
        click_button(page, "All mistakes")
        grid_count(page, 9)
        set_confidence_filter(page, 0.6)
        mistakes = ds.match(F("ground_truth.label") != F("bifta.label"))
        expected = len(mistakes.match(F("bifta.confidence") >= 0.6))
        grid_count(page, expected, 9)
        page.wait_for_timeout(4000)
        shot(page, "annotator_mistakes_filter.png")
        text = summary_text(page)
        assert "82.0% (41 / 50)" in text, text
        assert "Showing: all mistakes" in text
        bars = page.locator(".js-plotly-plot").nth(1).locator(".bars .point")
        assert bars.count() == len(CLASSES)
    finally:
        restore_app(page, ds)


def test_zero_accuracy_class_can_be_clicked(app_server, app_dataset, page):
    """``pear`` (0 of 5 right) has a bar to click; it loads its mistakes."""
    base_url, _, _ = app_server
    open_app(page, base_url, app_dataset)
    open_panel(page)
    panel_png = shot(page, "annotator_panel.png")
    if os.environ.get("BIFTA_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(
            panel_png, os.path.join(DOCS_IMAGES, "mispredictions_panel.png")
        )
    plot = page.locator(".js-plotly-plot").nth(1)
    plot.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    first_bar = plot.locator(".bars .point path").first  # worst class first
    box = first_bar.bounding_box()
    assert box is not None and box["height"] >= 2, box
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    try:
        grid_count(page, PER_CLASS)
        page.get_by_text("Showing: mistakes on pear").first.wait_for(
            timeout=LOAD_TIMEOUT
        )
        shot(page, "annotator_zero_class.png")
    finally:
        restore_app(page, app_dataset)


def test_run_form_splits_pasted_classes(app_server, app_dataset, page):
    """A pasted "Coat, Dress, Shirt" chip is three classes; a blank one is
    dropped, and the form says what it understood."""
    base_url, _, _ = app_server
    open_app(page, base_url, app_dataset)
    page.keyboard.press("`")
    page.keyboard.type("zero-shot")
    page.get_by_text("BiFTA: zero-shot classify").first.click()
    # the form's last line (the run estimate) is there once the form has
    # resolved: a chip typed before that can be lost in the re-render
    page.get_by_text(re.compile("samples to classify")).first.wait_for(
        timeout=LOAD_TIMEOUT
    )
    box = input_after(page, "The classes to choose from")
    box.click()
    box.fill("Coat, Dress, Shirt")
    box.press("Enter")
    notice = page.get_by_text("3 classes: Coat, Dress, Shirt")
    notice.first.wait_for(timeout=LOAD_TIMEOUT)
    # a blank chip: the form resolves again and still reads 3 classes
    with page.expect_response(
        lambda r: "/operators/resolve-type" in r.url, timeout=LOAD_TIMEOUT
    ):
        box.fill("   ")
        box.press("Enter")
    notice.first.wait_for(timeout=LOAD_TIMEOUT)
    assert not page.get_by_text(re.compile(r"^4 classes")).count()
    shot(page, "annotator_run_form_paste.png")


def test_explanation_thumbnails_and_accept(app_server, app_dataset, page):
    """The modal panel shows crop thumbnails; "Accept prediction" writes
    the prediction into the sample's ground truth in the database."""
    base_url, _, _ = app_server
    ds = app_dataset
    first = ds.first()
    original = first.ground_truth.label
    assert first.bifta.label != original  # a mistake
    open_app(page, base_url, ds)
    page.locator('[data-cy="looker"]').first.click()
    tab = page.get_by_text("BiFTA explanation").first
    tab.wait_for(timeout=LOAD_TIMEOUT)
    tab.click()
    page.get_by_text("Runner-up").first.wait_for(timeout=LOAD_TIMEOUT)
    thumbs = page.locator('img[src^="data:image/png;base64,"]')
    thumbs.first.wait_for(timeout=LOAD_TIMEOUT)
    assert thumbs.count() == 3
    modal_png = shot(page, "annotator_explanation.png")
    try:
        click_button(page, "Accept prediction into ground_truth")
        for _ in range(60):
            first.reload()
            if first.ground_truth.label == first.bifta.label:
                break
            page.wait_for_timeout(500)
        assert first.ground_truth.label == first.bifta.label
        page.get_by_text(
            "1 labels were written to 'ground_truth'"
        ).first.wait_for(timeout=LOAD_TIMEOUT)
    finally:
        first.ground_truth = fo.Classification(label=original)
        first.save()
    if os.environ.get("BIFTA_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(
            modal_png, os.path.join(DOCS_IMAGES, "explanation_panel.png")
        )


def test_modal_draws_the_best_crop_only(app_server, app_dataset, page):
    """Opening the explanation panel leaves only the best crop to draw in
    the modal (its sidebar counts 1 crop, not 12); the modal stays open;
    "all crops" brings the 12 back."""
    base_url, _, _ = app_server
    open_app(page, base_url, app_dataset)
    page.locator('[data-cy="looker"]').first.click()
    tab = page.get_by_text("BiFTA explanation").first
    tab.wait_for(timeout=LOAD_TIMEOUT)
    tab.click()
    page.get_by_text("Runner-up").first.wait_for(timeout=LOAD_TIMEOUT)
    modal = page.locator('[data-cy="modal"]').first

    def crops_count():
        text = modal.inner_text()
        found = re.search(r"bifta_crops\s*\n\s*(\d+)", text)
        return int(found.group(1)) if found else text

    deadline = 30
    while crops_count() != 1 and deadline > 0:
        page.wait_for_timeout(1000)
        deadline -= 1
    shot(page, "annotator_modal_best_crop.png")
    assert crops_count() == 1
    assert page.get_by_text("Runner-up").first.is_visible()
    page.get_by_text("all crops", exact=True).first.click()
    deadline = 30
    while crops_count() != NUM_CROPS and deadline > 0:
        page.wait_for_timeout(1000)
        deadline -= 1
    assert crops_count() == NUM_CROPS
