"""Shared pytest setup for the BiFTA plugin.

The module-level code below runs when pytest imports this conftest, i.e. before
any test module and therefore before anything imports ``fiftyone`` (FiftyOne
reads its config from the environment at import time). It isolates every test
session:

- a private ``mongod`` (FiftyOne's bundled binary) on a free 127.0.0.1 port,
  with its data in a fresh per-session dir (``FIFTYONE_DATABASE_DIR``), reached
  through ``FIFTYONE_DATABASE_URI``; stopped, and the dir removed, at the end
  of the session. Why not let FiftyOne start its own: FiftyOne's database
  service *attaches to any FiftyOne DB service already running for the same
  user*, whatever its database dir (``MultiClientService.start``), so another
  FiftyOne process (a second test run, an App) would share its database with
  the tests. Subprocesses (e.g. an App server) inherit the URI;
- ``FIFTYONE_PLUGINS_DIR``: a temp dir holding only a symlink ``bifta`` -> the
  repository root (the plugin folder);
- ``FIFTYONE_CONFIG_PATH`` & co.: non-existent files, so that a developer's
  ``~/.fiftyone/*.json`` cannot change the tests' behaviour;
- ``HF_HUB_OFFLINE=1`` (no 46 s retries for pretrained weights), no analytics,
  no progress bars, no DB version notice, ``BIFTA_CACHE_DIR`` in the temp dir.

Set ``BIFTA_TEST_KEEP_TMP=1`` to keep the session temp dir (its path is printed
in the pytest header).
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)

# Importable: the library (`import bifta_plugin`) and test helpers in tests/
# (`from tiny_model import ...`). pytest's default "prepend" import mode already
# puts tests/ on sys.path (it has no __init__.py); this keeps working if one is added.
for _p in (TESTS_DIR, REPO_ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# --- isolated environment, set before anything imports fiftyone -------------
SESSION_TMP = tempfile.mkdtemp(prefix="bifta-pytest-")
FO_DATABASE_DIR = os.path.join(SESSION_TMP, "db")
FO_PLUGINS_DIR = os.path.join(SESSION_TMP, "plugins")
FO_DATASET_DIR = os.path.join(SESSION_TMP, "fiftyone")
FO_CONFIG_DIR = os.path.join(SESSION_TMP, "fiftyone-config")  # never created
BIFTA_CACHE_DIR = os.path.join(SESSION_TMP, "bifta-cache")
PLUGIN_LINK = os.path.join(FO_PLUGINS_DIR, "bifta")

for _d in (FO_DATABASE_DIR, FO_PLUGINS_DIR, FO_DATASET_DIR, BIFTA_CACHE_DIR):
    os.makedirs(_d, exist_ok=True)
os.symlink(REPO_ROOT, PLUGIN_LINK, target_is_directory=True)

if "fiftyone" in sys.modules:  # pragma: no cover - would defeat the isolation
    raise RuntimeError(
        "fiftyone was imported before tests/conftest.py set up the test "
        "environment (a plugin? PYTHONSTARTUP?); its config is already read"
    )

# Never talk to an external / already running database from the tests.
for _var in ("FIFTYONE_DATABASE_URI", "FIFTYONE_PRIVATE_DATABASE_PORT"):
    os.environ.pop(_var, None)


def _find_mongod():
    """FiftyOne's bundled mongod (same lookup as fiftyone/constants.py), found
    without importing fiftyone; None if missing."""
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")
    if spec is None:
        return None
    for root in spec.submodule_search_locations:
        if os.path.isfile(os.path.join(root, "db", "__init__.py")):
            path = os.path.join(root, "db", "bin", "mongod")
            return path if os.access(path, os.X_OK) else None
    return None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent():  # runs in the child: SIGTERM mongod if pytest dies
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def _start_mongod(mongod, timeout=60.0):
    """Starts mongod on a free port with FO_DATABASE_DIR; returns (proc, port)."""
    log_path = os.path.join(FO_DATABASE_DIR, "log", "mongo.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    for _attempt in range(3):  # a free port can be taken before mongod binds it
        port = _free_port()
        proc = subprocess.Popen(
            [mongod, "--dbpath", FO_DATABASE_DIR, "--logpath", log_path,
             "--logappend", "--port", str(port), "--bind_ip", "127.0.0.1",
             "--nounixsocket"],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise RuntimeError(
        f"tests/conftest.py could not start {mongod} (see {log_path}); "
        "run scripts/install.sh"
    )


def _stop_mongod_at_exit():  # in case pytest_unconfigure never ran
    if MONGOD_PROC is not None and MONGOD_PROC.poll() is None:
        MONGOD_PROC.terminate()
        try:
            MONGOD_PROC.wait(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover
            MONGOD_PROC.kill()


# registered before fiftyone is imported, so it runs after fiftyone's own
# exit handlers (which still use the database)
atexit.register(_stop_mongod_at_exit)

MONGOD_PATH = _find_mongod()
MONGOD_PROC = None
if MONGOD_PATH is not None:
    MONGOD_PROC, MONGOD_PORT = _start_mongod(MONGOD_PATH)
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{MONGOD_PORT}"
else:  # pragma: no cover - FiftyOne will then fail with its own message
    sys.stderr.write(
        "tests/conftest.py: FiftyOne's bundled mongod not found; "
        "run scripts/install.sh\n"
    )

os.environ.update(
    {
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_DATABASE_DIR": FO_DATABASE_DIR,
        "FIFTYONE_PLUGINS_DIR": FO_PLUGINS_DIR,
        "FIFTYONE_DEFAULT_DATASET_DIR": FO_DATASET_DIR,
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
        "FIFTYONE_CONFIG_PATH": os.path.join(FO_CONFIG_DIR, "config.json"),
        "FIFTYONE_APP_CONFIG_PATH": os.path.join(FO_CONFIG_DIR, "app_config.json"),
        "FIFTYONE_ANNOTATION_CONFIG_PATH": os.path.join(
            FO_CONFIG_DIR, "annotation_config.json"
        ),
        "FIFTYONE_EVALUATION_CONFIG_PATH": os.path.join(
            FO_CONFIG_DIR, "evaluation_config.json"
        ),
        "HF_HUB_OFFLINE": "1",
        "BIFTA_CACHE_DIR": BIFTA_CACHE_DIR,
    }
)

CHROMIUM = os.environ.get("BIFTA_CHROMIUM", "/usr/bin/chromium")


# --- hooks -------------------------------------------------------------------
def pytest_report_header(config):
    return [
        f"bifta: session temp dir {SESSION_TMP}",
        f"bifta: mongod pid {MONGOD_PROC and MONGOD_PROC.pid}, "
        f"FIFTYONE_DATABASE_URI={os.environ.get('FIFTYONE_DATABASE_URI')}, "
        f"dbpath {FO_DATABASE_DIR}",
        f"bifta: FIFTYONE_PLUGINS_DIR={FO_PLUGINS_DIR} (bifta -> {REPO_ROOT})",
    ]


def pytest_collection_modifyitems(config, items):
    """Skip `browser` tests when disabled (BIFTA_BROWSER_TESTS=0, which .ci/run
    sets when it could not install chromium) or when chromium is missing."""
    if os.environ.get("BIFTA_BROWSER_TESTS", "1") == "0":
        reason = "BIFTA_BROWSER_TESTS=0"
    elif not os.access(CHROMIUM, os.X_OK):
        reason = (
            f"no chromium at {CHROMIUM} (apt-get install chromium, "
            "or set BIFTA_CHROMIUM)"
        )
    else:
        return
    skip = pytest.mark.skip(reason=f"browser test skipped: {reason}")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def _stop_mongod():
    """Closes FiftyOne's clients and stops this session's mongod.

    Returns True if no database process is left using FO_DATABASE_DIR.
    """
    fodb = sys.modules.get("fiftyone.core.odm.database")
    if fodb is not None:
        try:
            fodb._disconnect()
        except Exception:
            pass
    if MONGOD_PROC is None or MONGOD_PROC.poll() is not None:
        return True
    MONGOD_PROC.terminate()  # SIGTERM: clean shutdown, about a second
    try:
        MONGOD_PROC.wait(timeout=60)
    except subprocess.TimeoutExpired:  # pragma: no cover
        MONGOD_PROC.kill()
        MONGOD_PROC.wait()
    return True


def pytest_unconfigure(config):
    stopped = _stop_mongod()
    if os.environ.get("BIFTA_TEST_KEEP_TMP") == "1":
        sys.stderr.write(f"bifta conftest: kept {SESSION_TMP}\n")
    elif stopped:
        shutil.rmtree(SESSION_TMP, ignore_errors=True)
    else:  # pragma: no cover
        sys.stderr.write(f"bifta conftest: left {SESSION_TMP} in place\n")


# --- fixtures ----------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_name():
    """Name of a tiny open_clip model config registered for the tests (random
    weights; see tests/tiny_model.py and tests/assets/)."""
    try:
        from tiny_model import register_tiny_config
    except ImportError as e:
        pytest.fail(f"tests/tiny_model.py is missing or broken: {e!r}")
    return register_tiny_config()


#: (skimage.data function, file name, label, PIL mode written)
_SAMPLE_PHOTOS = [
    ("chelsea", "cat.jpg", "cat", "RGB"),
    ("astronaut", "astronaut.png", "astronaut", "RGB"),
    ("coffee", "coffee.jpg", "coffee", "RGB"),
    ("rocket", "rocket.jpg", "rocket", "RGB"),
    ("stereo_motorcycle", "motorcycle.png", "motorcycle", "RGB"),  # left view
    ("horse", "horse.png", "horse", "RGB"),  # binary silhouette -> RGB uint8
    ("camera", "camera.png", "camera", "L"),  # kept grayscale on purpose
    ("coins", "coins.jpg", "coins", "RGB"),
]
#: a tiny non-square image (13 wide x 7 high), the cat photo shrunk
TINY_IMAGE = ("tiny-cat.png", "cat", (13, 7))


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory):
    """Real photos from ``skimage.data`` written as JPEG/PNG files.

    Returns a list of ``(path, label)`` (str, str), in this order:
    cat.jpg, astronaut.png, coffee.jpg, rocket.jpg, motorcycle.png, horse.png
    (RGB), camera.png (grayscale "L"), coins.jpg, tiny-cat.png (13x7 px, "cat").
    All but camera.png are RGB.
    """
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    out_dir = tmp_path_factory.mktemp("sample_images")
    results = []
    for func, fname, label, mode in _SAMPLE_PHOTOS:
        arr = getattr(skdata, func)()
        if func == "stereo_motorcycle":  # (left, right, disparity)
            arr = arr[0]
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        img = Image.fromarray(np.ascontiguousarray(arr)).convert(mode)
        path = out_dir / fname
        if fname.endswith(".jpg"):
            img.save(path, quality=90)
        else:
            img.save(path)
        results.append((str(path), label))

    fname, label, size = TINY_IMAGE
    tiny = Image.fromarray(skdata.chelsea()).resize(size, Image.BILINEAR)
    tiny.save(out_dir / fname)
    results.append((str(out_dir / fname), label))
    return results


@pytest.fixture(scope="session")
def corrupt_image(tmp_path_factory):
    """Path (str) of a ``.jpg`` file that holds garbage, not an image."""
    path = tmp_path_factory.mktemp("corrupt") / "corrupt.jpg"
    path.write_bytes(b"this is not a JPEG\x00\xff\x13" + bytes(range(256)) * 4)
    return str(path)


@pytest.fixture
def fo_dataset():
    """Factory of uniquely named *persistent* FiftyOne datasets, deleted at
    teardown (only those: never `delete_non_persistent_datasets()`).

    ``make(samples=None, label_field="ground_truth")``: ``samples`` is an
    iterable of ``(filepath, label)``; each label (unless None) is stored as a
    ``fo.Classification`` in ``label_field``.
    """
    import fiftyone as fo

    fo.config.show_progress_bars = False
    names = []

    def make(samples=None, label_field="ground_truth"):
        name = "bifta-test-" + uuid.uuid4().hex
        ds = fo.Dataset(name, persistent=True)
        names.append(name)
        if samples:
            ds.add_samples(
                [
                    fo.Sample(
                        filepath=path,
                        **(
                            {label_field: fo.Classification(label=label)}
                            if label is not None
                            else {}
                        ),
                    )
                    for path, label in samples
                ]
            )
        return ds

    yield make

    for name in names:
        try:
            if fo.dataset_exists(name):
                fo.delete_dataset(name)
        except Exception as e:  # pragma: no cover
            sys.stderr.write(f"could not delete test dataset {name}: {e!r}\n")
