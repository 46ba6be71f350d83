"""Run leases and sharded runs, with real processes on the session's mongod.

- leases: a second process on a live run key is refused with the holder's
  name; a dead holder's lease goes stale and is claimed; a taken-over
  holder stops at its next batch;
- sharded runs: a run split 4 ways over real ``fiftyone delegated launch``
  workers labels every sample once, as one process does (same labels; logits to float rounding); a worker
  killed with SIGKILL mid-shard shows as stale, ``requeue`` queues its
  shard again, and the run completes with nothing lost or duplicated;
  simultaneous shard completions finalise the run once.

The tiny model (tests/tiny_model.py) with weights saved once, so every
process loads the same model; its config travels as ``model_config``.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.fiftyone

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
CLASSES = ["cat", "astronaut", "coffee", "rocket"]
HEARTBEAT_S = "0.5"  # stale after 1.5 s
FAST = dict(num_candidates=3, max_views=3)


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch):
    monkeypatch.setenv("BIFTA_LEASE_HEARTBEAT_S", HEARTBEAT_S)


def _env(**extra):
    env = dict(os.environ, BIFTA_LEASE_HEARTBEAT_S=HEARTBEAT_S, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, TESTS_DIR, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tiny_model import save_tiny_checkpoint

    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """240 small seeded random images (32-56 px)."""
    import numpy as np
    from PIL import Image

    out = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(240):
        h, w = rng.integers(32, 57, size=2)
        path = out / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append((str(path), CLASSES[i % len(CLASSES)]))
    return paths


def _encoder(checkpoint):
    from bifta_plugin.sdk.options import EncoderSpec
    from tiny_model import TINY_CONFIG_PATH, TINY_MODEL_NAME

    return EncoderSpec(TINY_MODEL_NAME, checkpoint, device="cpu", model_config=str(TINY_CONFIG_PATH))


# ----------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------
def test_shard_ids_partition_the_sorted_ids_in_balanced_ranges():
    from bifta_plugin.sdk.shards import check_shard, shard_ids

    ids = [f"{i:024x}" for i in range(103)][::-1]
    for k in (1, 2, 4, 7, 103, 150):
        parts = [shard_ids(ids, i, k) for i in range(k)]
        assert sorted(sum(parts, [])) == sorted(ids)  # each id exactly once
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
        assert all(p == sorted(p) for p in parts)
    for bad in [(4, 4), (-1, 2), (0, 0), (1,), "0/2", (0.5, 2)]:
        with pytest.raises(ValueError, match="shard must be"):
            check_shard(bad)


# ----------------------------------------------------------------------------
# leases, in this process
# ----------------------------------------------------------------------------
def test_lease_refused_while_live_claimed_when_stale_and_taken_over(fo_dataset, sample_images):
    from bifta_plugin.sdk import lease as bls

    ds = fo_dataset(sample_images[:2])
    first = bls.acquire(ds, "k")
    with pytest.raises(bls.LeaseHeldError) as e:
        bls.acquire(ds, "k")
    assert f"pid {os.getpid()}" in str(e.value) and "take_over=True" in str(e.value)
    first.beat(done=1, total=2)
    state = bls.describe_state(bls.load_state(ds, "k"))
    assert state["shards"][0]["status"] == "running" and state["shards"][0]["done"] == 1

    first.stop_heartbeat()  # as if the process died
    time.sleep(3 * float(HEARTBEAT_S) + 0.3)
    state = bls.describe_state(bls.load_state(ds, "k"))
    assert state["stale"] and state["shards"][0]["status"] == "stale"
    second = bls.acquire(ds, "k")  # a stale lease is claimed
    with pytest.raises(bls.LeaseLostError, match="taken over by pid"):
        first.beat()

    third = bls.acquire(ds, "k", take_over=True)  # a live one only when asked
    with pytest.raises(bls.LeaseLostError):
        second.beat()
    third.release(bls.INTERRUPTED)
    assert bls.load_state(ds, "k")["shards"][0]["status"] == "interrupted"
    bls.acquire(ds, "k").release(bls.COMPLETED)  # an ended lease is claimed


def test_simultaneous_shard_completions_finalise_once(fo_dataset, sample_images):
    from bifta_plugin.sdk import lease as bls
    from bifta_plugin.sdk import shards as bsh
    from bifta_plugin.sdk.results import RunResult

    ds = fo_dataset(sample_images[:2])
    k = 6
    for trial in range(5):
        leases = [bls.acquire(ds, "fin", shard=(i, k)) for i in range(k)]
        barrier = threading.Barrier(k)
        finalisers = []

        def finish(lease):
            result = RunResult(run_key="fin", label_field="fin", fields={}, method="clip",
                               num_samples=1, num_processed=1)
            barrier.wait()
            if bsh.complete_shard(lease, result) is not None:
                finalisers.append(lease.index)

        threads = [threading.Thread(target=finish, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(finalisers) == 1, (trial, finalisers)
        state = bls.load_state(ds, "fin")
        assert state["num_completed"] == k and state["finalised_at"] is not None


# ----------------------------------------------------------------------------
# two processes on one run key
# ----------------------------------------------------------------------------
HOLDER = r"""
import sys
import fiftyone as fo
from bifta_plugin.sdk import lease
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions
from bifta_plugin.sdk.run import iter_bifta
from tiny_model import TINY_CONFIG_PATH, TINY_MODEL_NAME

name, ckpt, extra = sys.argv[1], sys.argv[2], sys.argv[3]
ds = fo.load_dataset(name)
events = iter_bifta(
    ds, ["cat", "astronaut", "coffee", "rocket"], method="clip",
    encoder=EncoderSpec(TINY_MODEL_NAME, ckpt, device="cpu", model_config=str(TINY_CONFIG_PATH)),
    runtime=RunOptions(batch_size=2, num_workers=0, skip_existing=extra == "skip"),
    output=OutputSpec("held"), overwrite=extra == "overwrite",
)
try:
    for event in events:
        if event.phase == "classify":
            print("BATCH", event.done, flush=True)
            sys.stdin.readline()  # the test says when to go on
        if event.is_final:
            print("DONE", event.result.num_processed, flush=True)
except lease.LeaseHeldError as e:
    print("REFUSED", e, flush=True)
"""


def _holder(tmp_path, ds, checkpoint, extra="-"):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    return subprocess.Popen(
        [sys.executable, str(script), ds.name, checkpoint, extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(), cwd=REPO_ROOT,
    )


@pytest.mark.slow
def test_concurrent_runs_on_one_key_the_second_is_refused(
    fo_dataset, sample_images, checkpoint, tmp_path
):
    from bifta_plugin.sdk.records import get_bifta_run_info

    ds = fo_dataset(sample_images[:8])
    # two processes started together: exactly one runs, the other is refused
    procs = [_holder(tmp_path, ds, checkpoint) for _ in range(2)]
    first_lines = [p.stdout.readline().strip() for p in procs]
    assert sorted(line.split()[0] for line in first_lines) == ["BATCH", "REFUSED"], first_lines
    holder = procs[[line.startswith("BATCH") for line in first_lines].index(True)]
    refused = first_lines[[line.startswith("REFUSED") for line in first_lines].index(True)]
    assert f"pid {holder.pid}" in refused and "--take-over" in refused
    ds.reload()  # the run was registered by another process
    info = get_bifta_run_info(ds, "held")
    assert info["lease"]["owner"]["pid"] == holder.pid and info["stale"] is False

    # mid-way, a resuming run and an overwriting run are refused too
    for extra in ("skip", "overwrite"):
        other = _holder(tmp_path, ds, checkpoint, extra)
        out, err = other.communicate(timeout=120)
        assert out.startswith("REFUSED") and f"pid {holder.pid}" in out, (out, err)

    out, err = holder.communicate("\n" * 10, timeout=120)  # let it finish
    assert holder.returncode == 0, err
    assert "DONE 8" in out and "Failed to update" not in err
    ds.reload()
    info = get_bifta_run_info(ds, "held")
    assert info["status"] == "completed" and info["lease"]["status"] == "completed"
    assert len(ds.exists("held")) == 8


# ----------------------------------------------------------------------------
# delegated workers
# ----------------------------------------------------------------------------
class Workers:
    """``fiftyone delegated launch`` processes on this session's database."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.procs = []

    def start(self, n=1):
        exe = os.path.join(os.path.dirname(sys.executable), "fiftyone")
        for _ in range(n):
            log = open(self.log_dir / f"worker{len(self.procs)}.log", "w")
            self.procs.append(subprocess.Popen(
                [exe, "delegated", "launch"], stdout=log, stderr=subprocess.STDOUT,
                env=_env(), cwd=str(self.log_dir), start_new_session=True,
            ))

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self):
        return "\n".join(f.read_text()[-3000:] for f in sorted(self.log_dir.glob("*.log")))


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    pool = Workers(tmp_path_factory.mktemp("workers"))
    pool.start(3)
    yield pool
    pool.stop()


def _wait(predicate, timeout, what, workers=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    logs = workers.logs() if workers is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def _wait_completed(ds, run_key, workers, timeout=240):
    """The run's info once its record says completed (written by a worker)."""
    from bifta_plugin.sdk.records import get_bifta_run_info, is_bifta_run

    def completed():
        ds.reload()
        if not is_bifta_run(ds, run_key):
            return None
        info = get_bifta_run_info(ds, run_key)
        return info if info["status"] == "completed" else None

    try:
        return _wait(completed, timeout, f"run {run_key!r} to complete", workers)
    except AssertionError as e:
        from bifta_plugin.sdk import lease as bls
        from fiftyone.operators.delegated import DelegatedOperationService

        ops = DelegatedOperationService().list_operations(dataset_name=ds.name)
        errors = [(op.run_state, op.result and op.result.error) for op in ops]
        raise AssertionError(f"{e}\nstate: {bls.load_state(ds, run_key)}\nops: {errors}") from None


def _same_labels(ds, field, reference):
    """Same label on every sample, logits equal to float rounding.

    Not bit-identical: under load a worker can miss heartbeats (stale after
    1.5 s here), another worker takes its shard over and resumes it in
    other batches, and a batch's composition moves the last bits of the
    encoder's matmuls.
    """
    got, want = _labels(ds, field), _labels(ds, reference)
    assert got.keys() == want.keys()
    assert {i: lab for i, (lab, _) in got.items()} == {i: lab for i, (lab, _) in want.items()}
    for i, (_, logits) in got.items():
        assert (logits is None) == (want[i][1] is None), i
        if logits is not None:
            assert logits == pytest.approx(want[i][1], abs=1e-5), i


def _labels(ds, field):
    ids = ds.values("id")
    labels = ds.values(f"{field}.label")
    logits = ds.values(f"{field}.logits")
    return {i: (lab, None if lg is None else [float(x) for x in lg]) for i, lab, lg in zip(ids, labels, logits)}


def _queue(ds, checkpoint, label, num_shards, **runtime):
    from bifta_plugin.sdk.options import OutputSpec, RunOptions
    from bifta_plugin.sdk.shards import queue_sharded_run

    return queue_sharded_run(
        ds, num_shards=num_shards, classes=CLASSES, method="clip",
        encoder=_encoder(checkpoint), runtime=RunOptions(batch_size=4, num_workers=0, **runtime),
        output=OutputSpec(label, gt_field="ground_truth"),
    )


def _single(ds, checkpoint, label):
    from bifta_plugin.sdk.options import OutputSpec, RunOptions
    from bifta_plugin.sdk.run import run_bifta

    return run_bifta(
        ds, CLASSES, method="clip", encoder=_encoder(checkpoint),
        runtime=RunOptions(batch_size=4, num_workers=0), output=OutputSpec(label, gt_field="ground_truth"),
    )


@pytest.mark.slow
def test_sharded_run_on_delegated_workers_equals_one_process(
    fo_dataset, many_images, checkpoint, workers
):
    ds = fo_dataset(many_images)
    single = _single(ds, checkpoint, "single")
    ids = _queue(ds, checkpoint, "sharded", 4)
    assert len(ids) == 4
    info = _wait_completed(ds, "sharded", workers)
    shards = info["shards"]
    assert shards["num_shards"] == 4 and shards["num_completed"] == 4 and shards["finalised_at"]
    counts = [s["counts"] for s in shards["shards"]]
    assert sorted(c["num_samples"] for c in counts) == [60, 60, 60, 60]
    assert sum(c["num_processed"] for c in counts) == 240
    assert len({s["owner"]["pid"] for s in shards["shards"]}) >= 2  # really spread
    assert info["results"]["num_processed"] == 240 and info["results"]["num_samples"] == 240
    assert info["results"]["accuracy"] == pytest.approx(single.accuracy)
    ds.reload()
    _same_labels(ds, "sharded", "single")


@pytest.mark.slow
def test_killed_worker_is_stale_then_requeued_and_nothing_is_lost(
    fo_dataset, many_images, checkpoint, workers, capsys
):
    from bifta_plugin.cli.commands import main
    from bifta_plugin.sdk import lease as bls

    ds = fo_dataset(many_images)
    _single(ds, checkpoint, "single")
    _queue(ds, checkpoint, "crash", 4)

    def running_mid_shard():
        state = bls.load_state(ds, "crash")
        for s in state["shards"]:
            if s["status"] == "running" and 0 < (s["done"] or 0) < (s["total"] or 0):
                return s
        return None

    victim = _wait(running_mid_shard, 120, "a shard mid-way", workers)
    pid = victim["owner"]["pid"]
    os.kill(pid, signal.SIGKILL)
    workers.start(1)  # keep the pool at 3

    def stale():
        state = bls.describe_state(bls.load_state(ds, "crash"))
        return state["stale"] and state["shards"][victim["index"]]["status"] == "stale"

    _wait(stale, 30, "the killed shard to go stale", workers)
    ds.reload()  # the CLI below runs in this process, whose dataset is cached
    capsys.readouterr()
    assert main(["info", "--dataset", ds.name, "crash"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stale"] is True and info["status"] == "running"
    assert info["shards"]["shards"][victim["index"]]["owner"]["pid"] == pid
    assert main(["runs", "--dataset", ds.name]) == 0
    assert "stale" in capsys.readouterr().out

    assert main(["requeue", "--dataset", ds.name, "crash"]) == 0
    assert f"[{victim['index']}]" in capsys.readouterr().out
    info = _wait_completed(ds, "crash", workers)
    state = bls.load_state(ds, "crash")
    redone = state["shards"][victim["index"]]["counts"]
    # what the killed worker wrote is kept (at least what it had reported)
    assert redone["num_skipped"] >= victim["done"] > 0
    total = sum(s["counts"]["num_processed"] for s in state["shards"])
    assert total + redone["num_skipped"] == 240  # every sample predicted once
    _same_labels(ds, "crash", "single")
    assert info["stale"] is False and info["results"]["num_samples"] == 240


# ----------------------------------------------------------------------------
# the App's form: "Shards"
# ----------------------------------------------------------------------------
@pytest.mark.slow
def test_form_shards_queue_delegated_operations_that_finish_the_run(
    fo_dataset, sample_images, tiny_model_name, checkpoint
):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext, Executor
    from tiny_model import TINY_CONFIG_PATH

    uri = "@bifta/bifta/run_bifta"
    ds = fo_dataset(sample_images[:6])
    params = dict(classes_source="list", classes=CLASSES, model_name=tiny_model_name,
                  pretrained=checkpoint, device="cpu", method="clip", batch_size=2,
                  label_field="formshards", gt_field="ground_truth",
                  model_config=[str(TINY_CONFIG_PATH)])  # for any worker
    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": params,
                                           "view": ds.view()._serialize()},
                           executor=Executor(), operator_uri=uri)
    props = foo.get_operator(uri).resolve_input(ctx).type.properties
    assert "num_shards" in props and "suggested for this target: 1" in props["num_shards"].view.description

    result = foo.execute_operator(uri, ctx=dict(dataset=ds.name, params=dict(params, num_shards=3)))
    assert result.error is None, result.error
    dos = DelegatedOperationService()
    queued = dos.list_operations(operator=uri, dataset_name=ds.name)  # maybe claimed already
    assert sorted(op.context.request_params["params"]["shard"] for op in queued) == [
        [0, 3], [1, 3], [2, 3]]
    # this process runs what the module's delegated workers (if started) do not
    dos.execute_queued_operations(operator=uri, dataset_name=ds.name)
    info = _wait_completed(ds, "formshards", None, timeout=120)
    assert info["shards"]["num_completed"] == 3
    assert info["results"]["num_processed"] == 6 and info["results"]["accuracy"] is not None
    assert len(ds.exists("formshards")) == 6
    _wait(lambda: all(op.run_state == "completed"
                      for op in dos.list_operations(operator=uri, dataset_name=ds.name)),
          30, "the operations to be marked completed")
    for op in dos.list_operations(operator=uri, dataset_name=ds.name):
        dos.delete_operation(op.id)


def test_deleting_a_run_keeps_a_live_lease_and_drops_an_idle_one(fo_dataset, sample_images):
    from bifta_plugin.sdk import lease as bls

    ds = fo_dataset(sample_images[:2])
    live = bls.acquire(ds, "d")
    bls.delete_idle_state(ds, "d")  # e.g. the run replacing its own key
    live.beat()
    live.release(bls.COMPLETED)
    bls.delete_idle_state(ds, "d")
    assert bls.load_state(ds, "d") is None
