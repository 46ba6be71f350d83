"""The panels in the real FiftyOne App, driven by headless Debian chromium.

A persistent dataset with predictions, ground truth, crops, a BiFTA run and a
FiftyOne evaluation is served by ``python -m fiftyone.server.main`` (started
here with the tests' environment: same database, same plugins dir); python
``playwright`` drives ``/usr/bin/chromium`` (never ``playwright install``).

Skipped (see tests/conftest.py) when chromium is missing or
``BIFTA_BROWSER_TESTS=0``, and here when python playwright is missing.
Screenshots go to ``artifacts/screenshots/`` (gitignored); with
``BIFTA_UPDATE_SCREENSHOTS=1`` the panel screenshot is also copied to
``docs/images/mispredictions_panel.png`` (the README's).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

import fiftyone as fo

from bifta_plugin.sdk import analysis as ba
from bifta_plugin.sdk import records as runs
from test_analysis import CLASSES, _prediction
from test_generation import FakeLLM, llm  # noqa: F401 (the LLM server fixture)

pytestmark = [pytest.mark.browser, pytest.mark.fiftyone, pytest.mark.slow]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOTS = os.path.join(REPO_ROOT, "artifacts", "screenshots")
DOCS_SCREENSHOT = os.path.join(
    REPO_ROOT, "docs", "images", "mispredictions_panel.png"
)
CHROMIUM = os.environ.get("BIFTA_CHROMIUM", "/usr/bin/chromium")
# environment.md's flags, less --headless (playwright adds it) and
# --user-data-dir (playwright refuses it and uses a fresh temp profile)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1700, "height": 1050}
SERVER_TIMEOUT = 90  # s, server up
LOAD_TIMEOUT = 60_000  # ms, App / panel
#: (gt, pred, count): 20 samples, accuracy 14/20
COUNTS = [
    ("cat", "cat", 4), ("cat", "dog", 3), ("dog", "dog", 5), ("dog", "cat", 1),
    ("fox", "fox", 3), ("fox", "dog", 2), ("owl", "owl", 2),
]  # fmt: skip
NUM_SAMPLES = sum(n for _, _, n in COUNTS)

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="browser test skipped: python playwright is not installed "
    "(pip install playwright; requirements-dev.txt)",
)


def _timed(timings, name, start):
    timings[name] = round(time.monotonic() - start, 1)


# --- dataset and server ----------------------------------------------------
def _write_images(out_dir, count):
    from PIL import Image
    from skimage import data as skdata

    photos = [
        skdata.chelsea(),
        skdata.astronaut(),
        skdata.coffee(),
        skdata.rocket(),
    ]
    paths = []
    for i in range(count):
        path = os.path.join(out_dir, f"img{i:02d}.jpg")
        Image.fromarray(photos[i % len(photos)]).resize((192, 144)).save(path)
        paths.append(path)
    return paths


def _crops(label):
    return fo.Detections(
        detections=[
            fo.Detection(
                label="best",
                bounding_box=[0.2, 0.15, 0.5, 0.55],
                confidence=0.41,
                best=True,
                description=f"a {label} with pointed ears",
            ),
            fo.Detection(
                label="crop",
                bounding_box=[0.05, 0.05, 0.6, 0.6],
                confidence=0.33,
                best=False,
            ),
            fo.Detection(
                label="crop",
                bounding_box=[0.4, 0.4, 0.55, 0.55],
                confidence=0.26,
                best=False,
            ),
        ]
    )


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    fo.config.show_progress_bars = False
    name = "bifta-browser-" + uuid.uuid4().hex[:8]
    ds = fo.Dataset(name, persistent=True)
    pairs = [(gt, pred) for gt, pred, n in COUNTS for _ in range(n)]
    paths = _write_images(tmp_path_factory.mktemp("app_images"), len(pairs))
    samples = []
    for i, (path, (gt, pred)) in enumerate(zip(paths, pairs)):
        confidence = 0.5 + 0.02 * i
        samples.append(
            fo.Sample(
                filepath=path,
                ground_truth=fo.Classification(label=gt),
                bifta=_prediction(pred, confidence, 2 * confidence - 1),
                bifta_crops=_crops(pred),
            )
        )
    ds.add_samples(samples)
    ds.evaluate_classifications(
        "bifta", gt_field="ground_truth", eval_key="eval"
    )
    runs.register_bifta_run(
        ds,
        "bifta",
        {
            "method": "bifta",
            "label_field": "bifta",
            "fields": {"label": "bifta", "crops": "bifta_crops"},
            "classes": CLASSES,
            "gt_field": "ground_truth",
            "eval_key": "eval",
            "timestamp": "2025-01-01T00:00:00",
        },
    )
    yield ds
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url, proc, log_path, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    with open(log_path) as f:
        tail = f.read()[-3000:]
    pytest.fail(
        f"FiftyOne App server not up at {url} (exit code "
        f"{proc.poll()}); log:\n{tail}"
    )


#: the App server with the tiny test model registered in its process, so runs
#: executed immediately by the App can use it
_SERVER_MAIN = (
    "import runpy, sys; "
    f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
    "import tiny_model; tiny_model.register_tiny_config(); "
    "sys.argv[0] = 'fiftyone.server.main'; "
    "runpy.run_module('fiftyone.server.main', run_name='__main__')"
)
BROWSER_API_KEY = "sk-test-" + "br0wser-secret"


@pytest.fixture(scope="module")
def app_server(app_dataset, tmp_path_factory):
    """``(base_url, timings)`` of an App server; always stopped at teardown."""
    log_dir = tmp_path_factory.mktemp("app_server")
    log_path = os.path.join(log_dir, "server.log")
    port = _free_port()
    timings = {}
    start = time.monotonic()
    with open(log_path, "w") as log:
        # same env as the tests: FIFTYONE_DATABASE_URI (the session's mongod),
        # FIFTYONE_PLUGINS_DIR (bifta -> repo root), isolated config paths
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SERVER_MAIN,
                "--port",
                str(port),
                "--address",
                "127.0.0.1",
            ],
            # the key of the LLM test server, as a user would set it; it must
            # reach that server and never the server log (checked below)
            env=dict(
                os.environ,
                BIFTA_LLM_API_KEY=BROWSER_API_KEY,
                NO_PROXY="127.0.0.1,localhost",  # the local LLM server
                no_proxy="127.0.0.1,localhost",
            ),
            cwd=str(log_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(base_url + "/", proc, log_path, SERVER_TIMEOUT)
        _timed(timings, "server_start_s", start)
        yield base_url, timings, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        sys.stderr.write(f"\nbifta browser timings: {timings}\n")


@pytest.fixture
def page():
    os.makedirs(SCREENSHOTS, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


# --- App helpers -----------------------------------------------------------
def shot(page, name):
    path = os.path.join(SCREENSHOTS, name)
    page.screenshot(path=path)
    return path


def grid_count(page, count, timeout=LOAD_TIMEOUT):
    """Waits for the grid's sample count text, e.g. "3 samples"."""
    page.get_by_text(f"{count} samples", exact=True).first.wait_for(
        timeout=timeout
    )


def open_dataset(page, base_url, dataset):
    """Opens the dataset page. On a cold server the App can give up waiting
    for its first state and land on "No dataset selected": load again."""
    any_count = page.get_by_text(re.compile(r"^\d+ samples?$"))
    for attempt in range(3):
        page.goto(f"{base_url}/datasets/{dataset.name}")
        try:
            any_count.or_(page.get_by_text("No dataset selected")).first.wait_for(
                timeout=LOAD_TIMEOUT
            )
        except sync_api.TimeoutError:
            continue
        if not any_count.count():
            continue
        if not page.get_by_text(f"{NUM_SAMPLES} samples", exact=True).count():
            # the server hands a new page the App state it last had (view
            # and spaces): a test that stopped midway leaves its view there
            clear_view_bar(page)
        try:
            grid_count(page, NUM_SAMPLES, timeout=15_000)
        except sync_api.TimeoutError:
            continue
        return attempt
    shot(page, "failed_open_dataset.png")
    pytest.fail("the App did not show the dataset's grid")


def clear_view_bar(page):
    page.locator('[data-cy="btn-clear-view-bar"]').first.click()


def dismiss_popups(page):
    """The "Explore Enterprise" pop-up, when it shows."""
    button = page.get_by_role("button", name="Dismiss")
    try:
        button.first.wait_for(timeout=5000)
        button.first.click()
    except sync_api.TimeoutError:
        pass


def open_mispredictions_panel(page):
    page.locator('[title="New panel"]').first.click()
    page.get_by_text("BiFTA mispredictions", exact=True).click()
    page.get_by_text("Confusion matrix (click a cell").first.wait_for(
        timeout=LOAD_TIMEOUT
    )
    page.wait_for_timeout(1500)  # plotly layout settles


def stable_box(locator, settle_ms=400, timeout=10.0):
    """The element's bounding box once two reads ``settle_ms`` apart agree:
    a re-render after the previous click must not move the target between
    measuring and clicking."""
    page = locator.page
    deadline = time.monotonic() + timeout
    box = locator.bounding_box()
    while time.monotonic() < deadline:
        page.wait_for_timeout(settle_ms)
        again = locator.bounding_box()
        if again == box:
            return box
        box = again
    return box


def click_cell(page, classes, gt, pred):
    """Clicks the heatmap cell (row ``gt``, column ``pred``): the matrix is
    the panel's first plot, rows top to bottom (y axis reversed)."""
    plot = page.locator(".js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    box = stable_box(plot.locator(".nsewdrag").first)
    n = len(classes)
    x = box["x"] + (classes.index(pred) + 0.5) * box["width"] / n
    y = box["y"] + (classes.index(gt) + 0.5) * box["height"] / n
    page.mouse.click(x, y)


# --- tests -----------------------------------------------------------------
def test_mispredictions_panel_in_the_app(app_server, app_dataset, page):
    base_url, timings, _ = app_server
    ds = app_dataset
    classes = ba.build_confusion_matrix(ds, "bifta", "ground_truth").classes

    start = time.monotonic()
    retries = open_dataset(page, base_url, ds)
    _timed(timings, "dataset_page_s", start)
    timings["dataset_page_retries"] = retries
    dismiss_popups(page)

    start = time.monotonic()
    open_mispredictions_panel(page)
    _timed(timings, "panel_open_s", start)
    page.get_by_text("Accuracy").first.wait_for()
    assert page.get_by_text("70.0% (14 / 20)").count() == 1
    shot(page, "01_mispredictions_panel.png")

    # a cell: exactly its samples in the grid
    start = time.monotonic()
    click_cell(page, classes, "cat", "dog")
    grid_count(page, 3)
    _timed(timings, "cell_click_s", start)
    page.get_by_text("Showing: ground truth").first.wait_for()
    page.wait_for_timeout(1500)  # thumbnails
    panel_png = shot(page, "02_cell_cat_dog.png")

    # the panel kept the whole matrix: another cell still works
    click_cell(page, classes, "fox", "dog")
    grid_count(page, 2)
    shot(page, "03_cell_fox_dog.png")

    # a reload restores the panel and its cell view: the metrics stay on the
    # run's 20 samples (not re-based on the cell's 2) and the panel still
    # says what the grid shows
    page.reload()
    grid_count(page, 2)
    page.get_by_text("Confusion matrix (click a cell").first.wait_for(
        timeout=LOAD_TIMEOUT
    )
    page.get_by_text("70.0% (14 / 20)").first.wait_for(timeout=LOAD_TIMEOUT)
    page.get_by_text("Showing: ground truth").first.wait_for(timeout=LOAD_TIMEOUT)
    page.wait_for_timeout(1500)  # plotly layout settles

    # tag the current view (the fox -> dog cell)
    tag_button = page.get_by_text("Tag current view", exact=True).first
    tag_button.scroll_into_view_if_needed()
    tag_button.click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ds.count_sample_tags().get("needs_review") == 2:
            break
        time.sleep(0.5)
    tagged = ds.match_tags("needs_review")
    expected = ba.cell_view(ds, "bifta", "ground_truth", "fox", "dog")
    assert sorted(tagged.values("id")) == sorted(expected.values("id"))

    # reset: the whole dataset again
    reset = page.get_by_text("Reset view", exact=True).first
    reset.scroll_into_view_if_needed()
    reset.click()
    grid_count(page, NUM_SAMPLES)
    shot(page, "04_reset.png")

    if os.environ.get("BIFTA_UPDATE_SCREENSHOTS") == "1":
        os.makedirs(os.path.dirname(DOCS_SCREENSHOT), exist_ok=True)
        shutil.copyfile(panel_png, DOCS_SCREENSHOT)


def test_explanation_panel_in_the_modal(app_server, app_dataset, page):
    base_url, timings, _ = app_server
    start = time.monotonic()
    open_dataset(page, base_url, app_dataset)
    dismiss_popups(page)

    # a grid tile opens the sample modal, where the panel is a tab
    page.locator('[data-cy="looker"]').first.click()
    tab = page.get_by_text("BiFTA explanation").first
    tab.wait_for(timeout=LOAD_TIMEOUT)
    tab.click()
    page.get_by_text("Runner-up").first.wait_for(timeout=LOAD_TIMEOUT)
    _timed(timings, "explanation_s", start)
    page.wait_for_timeout(1000)
    shot(page, "05_explanation_panel.png")
    body = page.locator("body").inner_text()
    predicted = re.search(r"Predicted\s+(\w+)\s+\(\d", body)
    assert predicted and predicted.group(1) in CLASSES
    # the best crop's description of that very prediction
    assert f"a {predicted.group(1)} with pointed ears" in body
    assert "Runner-up" in body and "Top crops" in body


def _input_after(page, text):
    """The first input below the element showing ``text`` (a description)."""
    return page.get_by_text(text).first.locator("xpath=following::input[1]")


def test_run_form_generates_missing_descriptions_then_runs(
    app_server, app_dataset, page, tmp_path, llm, tiny_model_name
):
    """The run_bifta form in the App with "generate missing descriptions":
    the toggle swaps the file picker for a path box and shows the LLM
    settings and the plan; Execute (immediate, in the App server) generates
    the file with the local LLM server, then classifies. The API key (the
    server's environment) reaches the LLM and nothing else."""
    from bifta_plugin.sdk import records as bifta_runs

    base_url, timings, log_path = app_server
    ds = app_dataset
    path = tmp_path / "app.json"

    open_dataset(page, base_url, ds)
    dismiss_popups(page)
    page.keyboard.press("`")
    page.keyboard.type("zero-shot")
    page.get_by_text("BiFTA: zero-shot classify").first.click()

    page.get_by_text("Labels of an existing Classification field").first.click()
    field = page.get_by_text("Classify into the labels this field has anywhere in")
    field.first.locator("xpath=following::*[@role='combobox'][1]").click()
    page.get_by_role("option", name="ground_truth").first.click()
    page.get_by_text("4 classes: cat, dog, fox, owl").first.wait_for()

    page.get_by_text("BiFTA: crops + refined descriptions").first.click()
    page.get_by_role("option", name="Descriptions only").first.click()

    page.get_by_text("Generate missing descriptions with an LLM first").first.click()
    page.get_by_text("Enter the .json file to write").first.wait_for()
    _input_after(page, "The .json file to complete").fill(str(path))
    _input_after(page, "An OpenAI-compatible API, e.g.").fill(llm.base_url)
    _input_after(page, "Empty: the BIFTA_LLM_MODEL secret").fill("app-llm")
    _input_after(page, "Replies per question prompt").fill("1")
    _input_after(page, "An open_clip model name").fill(tiny_model_name)
    _input_after(page, "An open_clip tag").fill("none")
    _input_after(page, "The fo.Classification field to write").fill("llm_pred")
    _input_after(page, "auto, cpu, cuda").fill("cpu")
    # The form re-resolves after each typed value (debounced): wait for the
    # plan computed from the final values, not an earlier one.
    plan = page.get_by_text(re.compile(r"4 of 4 classes will be generated first.*app-llm"))
    plan.first.wait_for(timeout=LOAD_TIMEOUT)
    assert "app-llm" in plan.first.inner_text()
    assert "API key set" in plan.first.inner_text()
    shot(page, "06_run_form_generate.png")
    assert not llm.requests  # the form never asks the LLM

    start = time.monotonic()
    page.get_by_role("button", name="Execute").first.click()
    summary = page.get_by_text("Descriptions file:")
    try:
        summary.first.wait_for(timeout=120_000)
    except sync_api.TimeoutError:
        shot(page, "failed_run_form_execute.png")
        raise
    _timed(timings, "generate_and_run_s", start)
    body = page.locator("body").inner_text()
    shot(page, "07_run_form_output.png")
    assert "4 generated now" in body and f"Classified: {NUM_SAMPLES}" in body

    saved = json.loads(path.read_text())
    assert sorted(saved) == ["cat", "dog", "fox", "owl"]
    assert {r["payload"]["model"] for r in llm.requests} == {"app-llm"}
    for request in llm.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["authorization"] == f"Bearer {BROWSER_API_KEY}"
    ds.reload()
    assert len(ds.exists("llm_pred")) == NUM_SAMPLES
    assert set(ds.distinct("llm_pred.label")) <= set(saved)
    info = bifta_runs.get_bifta_run_info(ds, "llm_pred")
    assert info["descriptions"]["provenance"]["generation"]["model"] == "app-llm"
    for text in (
        path.read_text(),
        (tmp_path / "app.json.meta.json").read_text(),
        json.dumps(info, default=str),
        open(log_path).read(),
    ):
        assert BROWSER_API_KEY not in text
