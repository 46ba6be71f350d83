"""Crash consistency with real processes: SIGKILL at every write boundary
(the ``BIFTA_TEST_KILL_AT`` test hook of ``bifta_plugin.sdk.writing``),
SIGTERM, ``kill -9`` of the parent of DataLoader workers, a MongoDB killed
and restarted mid-run, and a delegated run under ``fiftyone delegated
launch -m``.

The runs happen in child processes (tests/crash_child.py) on this
session's database (or, for the MongoDB test, on a mongod of its own).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.fiftyone, pytest.mark.slow]

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(TESTS_DIR, "crash_child.py")
FIELDS = ("bifta", "bifta_crops", "bifta_scores")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from tiny_model import save_tiny_checkpoint

    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt"))


@pytest.fixture
def images(sample_images):
    """16 image paths (the photos, repeated)."""
    paths = [p for p, _ in sample_images[:8]]
    return (paths * 2)[:16]


class Zygote:
    """tests/crash_child.py --serve: forks one run process per request."""

    def __init__(self, tmp_dir):
        self.tmp_dir, self.count = tmp_dir, 0
        self.proc = subprocess.Popen(
            [sys.executable, CHILD, "--serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout.readline().strip() == "READY"

    def start(self, *args, env=None):
        """Starts a run; returns (pid, stdout path, stderr path)."""
        self.count += 1
        out, err = (self.tmp_dir / f"run{self.count}.{s}" for s in ("out", "err"))
        request = dict(args=[str(a) for a in args], env=env or {}, out=str(out), err=str(err))
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        started, pid = self.proc.stdout.readline().split()
        assert started == "STARTED"
        return int(pid), out, err

    def wait(self, pid):
        """The run's exit code (-N: killed by signal N)."""
        word, got, code = self.proc.stdout.readline().split()
        assert (word, int(got)) == ("EXIT", pid)
        return int(code)

    def run(self, *args, env=None):
        """Runs to the end; returns (exit code, stdout, stderr)."""
        pid, out, err = self.start(*args, env=env)
        code = self.wait(pid)
        return code, out.read_text(), err.read_text()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("runs"))
    yield z
    z.close()


def _wait_for_line(path, text, pid, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"run {pid} printed no {text!r}")


def _docs(dataset):
    """filepath-ordered stored documents of the run's fields."""
    dataset.reload()
    return [
        {k: doc.get(k) for k in ("filepath", *FIELDS, "bifta_best_crop", "bifta_error")}
        for doc in dataset._sample_collection.find({}, sort=[("filepath", 1), ("_id", 1)])
    ]


def _state(doc) -> str:
    """"complete", "empty" or "partial"."""
    present = [doc[f] is not None for f in FIELDS]
    if doc["bifta_error"] is not None or all(present):
        return "complete"
    return "empty" if not any(present) else "partial"


def _same_prediction(a, b):
    assert a["filepath"] == b["filepath"]
    assert a["bifta"]["label"] == b["bifta"]["label"]
    assert a["bifta"]["logits"] == pytest.approx(b["bifta"]["logits"], abs=1e-4)
    boxes = lambda d: [(x["label"], x["bounding_box"]) for x in d["bifta_crops"]["detections"]]  # noqa: E731
    assert boxes(a) == boxes(b)
    best = lambda d: d["bifta_best_crop"] and (d["bifta_best_crop"]["label"], d["bifta_best_crop"]["bounding_box"])  # noqa: E731
    assert best(a) == best(b)
    scores = lambda d: {k: v for k, v in d["bifta_scores"].items() if k not in ("_id", "_cls")}  # noqa: E731
    assert scores(a) == pytest.approx(scores(b), abs=1e-4)


def _status(dataset, key="bifta"):
    from bifta_plugin.sdk.records import get_bifta_run_info

    dataset.reload()
    return get_bifta_run_info(dataset, key)


# ----------------------------------------------------------------------------
# SIGKILL at each write boundary, then resume
# ----------------------------------------------------------------------------
#: each resumes the previous one: 16 samples in batches of 4
KILLS = [
    ("declared:1", 0),  # fields declared, nothing written: a rerun needs no overwrite
    ("registered:1", 0),
    ("before_batch:1", 0),
    ("mid_batch:2", 6),  # batch 1 and half of batch 2
    ("after_batch:1", 10),
    ("finishing:1", 16),  # all written, the status not recorded yet
]


def test_sigkill_at_every_write_boundary_then_resume(fo_dataset, images, weights, zygote):
    dataset = fo_dataset([(p, None) for p in images])
    for spec, expected_done in KILLS:
        rc, out, err = zygote.run(dataset.name, weights, env={"BIFTA_TEST_KILL_AT": spec})
        assert rc == -signal.SIGKILL, (spec, rc, err[-2000:])
        states = [_state(d) for d in _docs(dataset)]
        assert "partial" not in states, spec
        assert states.count("complete") == expected_done, (spec, states)
        assert _status(dataset)["status"] == "running"

    # what an older version writing field by field could leave: a label
    # without its crops or scores; the resume redoes those samples
    first, second = dataset.values("id")[:2]
    dataset.set_values("bifta_crops", {first: None}, key_field="id")
    dataset.set_values("bifta_scores", {second: None}, key_field="id")

    rc, out, err = zygote.run(dataset.name, weights)
    assert rc == 0, err[-3000:]
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result["num_processed"] == 2 and result["num_skipped"] == 14
    info = _status(dataset)
    assert info["status"] == "completed"

    reference = fo_dataset([(p, None) for p in images])
    rc, out, err = zygote.run(reference.name, weights, "--batch", "16")
    assert rc == 0, err[-3000:]
    got, want = _docs(dataset), _docs(reference)
    assert [_state(d) for d in got] == ["complete"] * 16
    for a, b in zip(got, want):
        _same_prediction(a, b)


# ----------------------------------------------------------------------------
# signals and DataLoader workers
# ----------------------------------------------------------------------------
def _descendants(pid):
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pids):
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_dead(pids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(pids)


def _start_mid_run(zygote, dataset, weights):
    """A run with 2 decode workers, stopped at its first BATCH; returns
    (pid, worker pids, stderr path)."""
    pid, out, err = zygote.start(
        dataset.name, weights, "--workers", "2", "--batch", "2", "--sleep", "30"
    )
    _wait_for_line(out, "BATCH", pid)
    workers = _descendants(pid)
    assert len(workers) >= 2, workers  # the DataLoader workers are running
    return pid, workers, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_records_interrupted_and_stops_workers(fo_dataset, images, weights, zygote, sig):
    dataset = fo_dataset([(p, None) for p in images])
    pid, workers, err = _start_mid_run(zygote, dataset, weights)
    os.kill(pid, sig)
    assert zygote.wait(pid) == 1
    assert _wait_dead(workers) == []
    info = _status(dataset)
    assert info["status"] == "interrupted", info
    assert info["results"]["num_processed"] == len(dataset.exists("bifta")) >= 2
    if sig == signal.SIGTERM:
        assert "terminated by signal SIGTERM" in info["results"]["error"]
        assert "Terminated" in err.read_text()


def test_kill_9_of_the_parent_leaves_no_worker(fo_dataset, images, weights, zygote):
    dataset = fo_dataset([(p, None) for p in images])
    pid, workers, _ = _start_mid_run(zygote, dataset, weights)
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait(pid) == -signal.SIGKILL
    assert _wait_dead(workers, timeout=10) == []


def test_workers_default_to_none_where_a_spawned_worker_cannot_import_the_pipeline(tmp_path):
    """Under spawn, a module FiftyOne imported under a plugin package name
    cannot be imported by a worker: no workers then (instead of a worker
    that dies or hangs at start); a module importable by name keeps them."""
    script = tmp_path / "spawn_check.py"
    script.write_text(
        "import multiprocessing, sys, types\n"
        f"sys.path.insert(0, {os.path.dirname(TESTS_DIR)!r})\n"
        "from bifta_plugin.engine import workers\n"
        "sys.modules['notapkg'] = types.ModuleType('notapkg')\n"
        "print(workers.safe_num_workers(2, 'notapkg.mod'),\n"
        "      workers.safe_num_workers(2, 'bifta_plugin.engine.pipeline'))\n"
        "multiprocessing.set_start_method('spawn')\n"
        "print(workers.safe_num_workers(2, 'notapkg.mod'),\n"
        "      workers.safe_num_workers(2, 'bifta_plugin.engine.pipeline'))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "2", "0", "2"]


# ----------------------------------------------------------------------------
# MongoDB killed and restarted mid-run
# ----------------------------------------------------------------------------
def _mongod_path():
    import fiftyone

    return os.path.join(os.path.dirname(fiftyone.__file__), "db", "bin", "mongod")


def _start_mongod(dbpath, port):
    import socket

    proc = subprocess.Popen(
        [_mongod_path(), "--dbpath", str(dbpath), "--port", str(port), "--bind_ip",
         "127.0.0.1", "--nounixsocket", "--logpath", str(dbpath / "mongod.log"), "--logappend"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, (dbpath / "mongod.log").read_text()[-2000:]
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("mongod did not start")


def test_mongod_killed_mid_run_then_resume(tmp_path, images, weights, zygote):
    import socket

    import pymongo

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dbpath = tmp_path / "db"
    dbpath.mkdir()
    paths = tmp_path / "paths.json"
    paths.write_text(json.dumps(images))
    uri = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=3000"
    args = ("--database-uri", uri, "--create", str(paths), "--batch", "2", "--sleep", "3")
    mongod = _start_mongod(dbpath, port)
    try:
        pid, out, err = zygote.start("crash-mongo", weights, *args)
        _wait_for_line(out, "BATCH", pid)
        time.sleep(0.5)  # past mongod's journal commit (100 ms): batch 1 is durable
        mongod.kill()  # no clean shutdown: the collection's count is stale after it
        mongod.wait()
        killed = time.monotonic()
        assert zygote.wait(pid) == 1
        waited = time.monotonic() - killed
        err = err.read_text()
        assert "DatabaseUnavailableError: lost the FiftyOne database 'fiftyone' at " \
            f"mongodb://127.0.0.1:{port}/ while writing batch" in err, err[-3000:]
        assert "rerun with skip_existing=True" in err
        assert waited < 30, waited  # two server selections of 3 s, plus start-up noise

        mongod = _start_mongod(dbpath, port)
        rc, out, err = zygote.run("crash-mongo", weights, *args[:4])
        assert rc == 0, err[-3000:]
        result = json.loads(out.split("RESULT ", 1)[1])
        assert result["num_samples"] == 16
        assert result["num_processed"] + result["num_skipped"] == 16
        assert result["num_skipped"] >= 2  # the batch written before the kill
        client = pymongo.MongoClient(uri)
        db = client["fiftyone"]
        name = db.datasets.find_one({"name": "crash-mongo"})["sample_collection_name"]
        docs = list(db[name].find({}))
        assert len(docs) == 16
        assert all(d.get(f) is not None for d in docs for f in FIELDS)
        run = db.runs.find_one({"key": "bifta"})
        assert run["config"]["status"] == "completed"
        client.close()
    finally:
        if mongod.poll() is None:
            mongod.terminate()
            mongod.wait(timeout=60)


# ----------------------------------------------------------------------------
# custom model configs; the operator under `fiftyone delegated launch -m`
# ----------------------------------------------------------------------------
def _custom_config(tmp_path, name="my-custom-arch"):
    """A copy of the tiny config under a name open_clip does not know yet."""
    from tiny_model import TINY_CONFIG_PATH

    path = tmp_path / f"{name}-{os.getpid()}-{time.monotonic_ns()}.json"
    shutil.copy(TINY_CONFIG_PATH, path)
    return path


def test_sdk_runs_a_custom_model_config(fo_dataset, sample_images, weights, tmp_path):
    from bifta_plugin.sdk.options import EncoderSpec, RunOptions
    from bifta_plugin.sdk.run import run_bifta
    import open_clip

    config = _custom_config(tmp_path)
    assert config.stem not in open_clip.list_models()
    dataset = fo_dataset(sample_images[:3])
    result = run_bifta(
        dataset, ["cat", "astronaut", "coffee"], method="clip",
        encoder=EncoderSpec(config.stem, weights, device="cpu", model_config=config),
        runtime=RunOptions(batch_size=2),
    )
    assert result.num_processed == 3
    assert _status(dataset)["model_name"] == config.stem


def _local_dir_model(tmp_path, weights):
    """An open_clip ``local-dir:`` folder: the tiny architecture under its
    own config, with the seeded weights."""
    from tiny_model import TINY_CONFIG_PATH

    folder = tmp_path / "my-local-model"
    folder.mkdir()
    cfg = json.loads(TINY_CONFIG_PATH.read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    shutil.copy(weights, folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


def _wait_run_state(dos, op_id, launcher, timeout=100.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = dos.get(op_id)
        if doc.run_state in ("completed", "failed"):
            return doc
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.5)
    raise AssertionError(f"delegated run still {doc.run_state!r} after {timeout:.0f} s")


def test_operator_runs_under_delegated_launch_with_default_workers(
    fo_dataset, images, weights, tmp_path
):
    """``fiftyone delegated launch -m`` runs each operation in a spawned
    process, where the plugin's modules are not importable by name; with
    the default workers (more samples than one batch) the run completes."""
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    descriptions = tmp_path / "descriptions.json"
    descriptions.write_text(json.dumps({c: [f"a photo of a {c}."] for c in ["cat", "coffee"]}))
    dataset = fo_dataset([(p, None) for p in images])
    queued = foo.execute_operator(
        "@bifta/bifta/run_bifta",
        ctx=dict(dataset=dataset.name, params=dict(
            classes_source="list", classes=["cat", "coffee"],
            descriptions_path=str(descriptions), method="bifta",
            model_name=_local_dir_model(tmp_path, weights), pretrained="none",
            device="cpu", batch_size=4, num_candidates=3, max_views=3,
        )),
        request_delegation=True,
    )
    op_id = queued.result["id"]
    fiftyone_cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    launcher = subprocess.Popen(
        [fiftyone_cli, "delegated", "launch", "-m", "--monitor-interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    dos = DelegatedOperationService()
    try:
        doc = _wait_run_state(dos, op_id, launcher)
    finally:
        launcher.send_signal(signal.SIGINT)  # the launcher's own way out
        try:
            log, _ = launcher.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            launcher.kill()
            log, _ = launcher.communicate()
    try:
        assert doc.run_state == "completed", (doc.result, log[-3000:])
        assert doc.result.result["num_processed"] == 16
    finally:
        dos.delete_operation(op_id)
    info = _status(dataset)
    assert info["status"] == "completed" and info["model_name"].startswith("local-dir:")
    assert len(dataset.exists("bifta_crops")) == 16
