"""Smoke tests of the test environment itself (tests/conftest.py, install.sh)."""

import os
import subprocess

import pytest

import conftest


def test_env_is_isolated():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["FIFTYONE_DO_NOT_TRACK"] == "true"
    assert os.environ["FIFTYONE_DATABASE_VALIDATION"] == "false"
    assert os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] == "false"
    assert os.environ["FIFTYONE_DATABASE_URI"] == (
        f"mongodb://127.0.0.1:{conftest.MONGOD_PORT}"
    )
    cache = os.environ["BIFTA_CACHE_DIR"]
    assert cache.startswith(conftest.SESSION_TMP) and os.path.isdir(cache)


def test_plugins_dir_holds_symlink_to_repo():
    plugins_dir = os.environ["FIFTYONE_PLUGINS_DIR"]
    assert plugins_dir.startswith(conftest.SESSION_TMP)
    assert os.listdir(plugins_dir) == ["bifta"]
    link = os.path.join(plugins_dir, "bifta")
    assert os.path.islink(link)
    assert os.path.realpath(link) == os.path.realpath(conftest.REPO_ROOT)


@pytest.mark.fiftyone
def test_fiftyone_config_reads_isolated_env():
    import fiftyone as fo

    assert fo.config.database_uri == os.environ["FIFTYONE_DATABASE_URI"]
    assert fo.config.database_dir == conftest.FO_DATABASE_DIR
    assert fo.config.plugins_dir == conftest.FO_PLUGINS_DIR
    assert fo.config.do_not_track is True
    assert fo.config.database_validation is False
    assert fo.config.show_progress_bars is False


@pytest.mark.fiftyone
def test_bundled_mongod_runs():
    import fiftyone.core.service as fos

    mongod = fos.DatabaseService.find_mongod()
    assert os.path.samefile(mongod, conftest.MONGOD_PATH)
    out = subprocess.run(
        [mongod, "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    major = int(out.stdout.split("db version v", 1)[1].split(".", 1)[0])
    assert major >= 6, out.stdout


@pytest.mark.fiftyone
def test_dataset_roundtrip_in_isolated_db(fo_dataset, sample_images):
    import fiftyone as fo

    ds = fo_dataset(sample_images[:2])
    assert ds.persistent and ds.name.startswith("bifta-test-")
    assert len(ds) == 2
    assert ds.count_values("ground_truth.label") == {"cat": 1, "astronaut": 1}
    assert ds.name in fo.list_datasets()

    # FiftyOne talks to this session's private mongod, whose data lie in the
    # session's temp dir, and did not start (or attach to) a DB service
    import fiftyone.core.odm.database as fodb

    assert fodb._db_service is None
    assert fodb.get_db_client().address == ("127.0.0.1", conftest.MONGOD_PORT)
    assert conftest.MONGOD_PROC.poll() is None
    cmdline = open(f"/proc/{conftest.MONGOD_PROC.pid}/cmdline").read().split("\0")
    assert cmdline[cmdline.index("--dbpath") + 1] == conftest.FO_DATABASE_DIR
    assert os.path.isfile(os.path.join(conftest.FO_DATABASE_DIR, "WiredTiger"))


def test_sample_images(sample_images, corrupt_image):
    from PIL import Image

    labels = [label for _, label in sample_images]
    assert labels == [
        "cat", "astronaut", "coffee", "rocket", "motorcycle",
        "horse", "camera", "coins", "cat",
    ]  # fmt: skip
    modes = {}
    for path, _ in sample_images:
        with Image.open(path) as img:
            img.load()
            modes[os.path.basename(path)] = (img.mode, img.size)
    assert modes["camera.png"][0] == "L"
    assert modes["tiny-cat.png"] == ("RGB", (13, 7))
    assert all(m == "RGB" for n, (m, _) in modes.items() if n != "camera.png")

    with pytest.raises(Exception):
        with Image.open(corrupt_image) as img:
            img.load()
