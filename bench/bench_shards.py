"""Sharded-run benchmark: images/s with 1 vs 2 delegated workers, and what a
shard costs besides its images (queue, claim, setup, finalise).

It starts its own ``mongod`` (FiftyOne's bundled one, in a temp dir), ``W``
real ``fiftyone delegated launch`` workers with ``--threads`` torch threads
each, and builds a dataset of ``--images`` small seeded random images. For
each worker count it queues one run of ``W`` shards
(:func:`bifta_plugin.sdk.shards.queue_sharded_run`) and measures, from the
delegated operations and the run state:

- wall time from queueing to the finalised run, and images/s over it;
- per shard: queue -> claim (a worker picked the operation up), claim ->
  lease (plugin import, model load, plan), lease -> last batch (the images),
  last shard's completion -> finalised (evaluation, totals).

A warm-up run on every worker first, so the workers have imported torch
(a cold worker pays that once, not per shard).

Default model: the tiny test architecture (``tests/assets``) with seeded
random weights, so it runs offline anywhere; ``--model ViT-B-32 --pretrained
none`` for a CLIP-sized encoder.

Example::

    python bench/bench_shards.py --images 400 --workers 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY_CONFIG = ROOT / "tests" / "assets" / "bifta-tiny-test.json"
CLASSES = ["cat", "dog", "car", "tree"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--model", default=None, help="default: the tiny test model")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--method", default="bifta")
    p.add_argument("--num-candidates", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shards.json")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------
# environment: a private mongod and plugin dir, set before importing fiftyone
# ----------------------------------------------------------------------------
def isolated_env(tmp: Path) -> subprocess.Popen:
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")
    mongod = Path(list(spec.submodule_search_locations)[0]) / "db" / "bin" / "mongod"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "db").mkdir()
    proc = subprocess.Popen(
        [str(mongod), "--dbpath", str(tmp / "db"), "--port", str(port), "--bind_ip",
         "127.0.0.1", "--nounixsocket", "--logpath", str(tmp / "mongod.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    (tmp / "plugins").mkdir()
    os.symlink(ROOT, tmp / "plugins" / "bifta")
    os.environ.update(
        FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}",
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_PLUGINS_DIR=str(tmp / "plugins"),
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_SHOW_PROGRESS_BARS="false",
        FIFTYONE_CONFIG_PATH=str(tmp / "none.json"),
        BIFTA_CACHE_DIR=str(tmp / "cache"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    return proc


def start_workers(n: int, threads: int, logs: Path) -> list:
    exe = Path(sys.executable).parent / "fiftyone"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    procs = []
    for i in range(n):
        log = open(logs / f"worker{i}.log", "w")
        procs.append(subprocess.Popen([str(exe), "delegated", "launch"], stdout=log,
                                      stderr=subprocess.STDOUT, env=env))
    return procs


def stop(procs) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# ----------------------------------------------------------------------------
# the measurement
# ----------------------------------------------------------------------------
def make_dataset(tmp: Path, num_images: int):
    import fiftyone as fo
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp / "images").mkdir()
    samples = []
    for i in range(num_images):
        path = tmp / "images" / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
        samples.append(fo.Sample(filepath=str(path),
                                 ground_truth=fo.Classification(label=CLASSES[i % 4])))
    ds = fo.Dataset("bench-shards", overwrite=True)
    ds.add_samples(samples)
    return ds


def encoder_spec(args, tmp: Path):
    from bifta_plugin.sdk.options import EncoderSpec

    if args.model is not None:
        return EncoderSpec(args.model, args.pretrained, device="auto")
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CONFIG.stem, pretrained=None)
    ckpt = tmp / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return EncoderSpec(TINY_CONFIG.stem, str(ckpt), device="auto", model_config=str(TINY_CONFIG))


def epoch(d: datetime.datetime) -> float:
    """Seconds since the epoch of a naive UTC datetime (as Mongo returns)."""
    return d.replace(tzinfo=datetime.timezone.utc).timestamp()


def timed_run(ds, args, encoder, label: str, num_shards: int, timeout=1800.0) -> dict:
    from bson import ObjectId

    from bifta_plugin.sdk import lease as bls
    from bifta_plugin.sdk.options import OutputSpec, RunOptions
    from bifta_plugin.sdk.shards import queue_sharded_run
    from fiftyone.operators.delegated import DelegatedOperationService

    t0 = time.time()
    ids = queue_sharded_run(
        ds, num_shards=num_shards, classes=CLASSES, method=args.method, encoder=encoder,
        runtime=RunOptions(batch_size=args.batch_size, num_workers=0),
        output=OutputSpec(label, gt_field="ground_truth"), num_candidates=args.num_candidates,
    )
    queued = time.time()
    deadline = t0 + timeout
    while time.time() < deadline:
        state = bls.load_state(ds, label)
        if state["finalised_at"] is not None:
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"run {label} did not finish")
    wall = time.time() - t0
    dos = DelegatedOperationService()
    shards = []
    for s, op_id in zip(state["shards"], ids):
        op = dos.get(ObjectId(op_id))
        shards.append(dict(
            queue_to_claim_s=epoch(op.started_at) - epoch(op.queued_at),
            claim_to_lease_s=epoch(s["since"]) - epoch(op.started_at),
            images_s=epoch(s["heartbeat"]) - epoch(s["since"]),
            images=s["counts"]["num_processed"],
        ))
    last_done = epoch(max(s["heartbeat"] for s in state["shards"]))
    finalise = epoch(state["finalised_at"])
    ds.reload()
    info_wait = time.time()
    while ds.get_run_info(label).config.status != "completed" and time.time() - info_wait < 120:
        time.sleep(0.2)
        ds.reload()
    return dict(
        num_shards=num_shards,
        wall_s=wall,
        queue_call_s=queued - t0,
        images_per_s=len(ds) / wall,
        shards=shards,
        finalise_claim_s=finalise - last_done,
        record_completed_s=time.time() - finalise,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    mongod = isolated_env(tmp)
    results = dict(images=args.images, threads_per_worker=args.threads, method=args.method,
                   cpus=os.cpu_count(), load_avg_start=os.getloadavg(), runs=[])
    workers = []
    try:
        ds = make_dataset(tmp, args.images)
        encoder = encoder_spec(args, tmp)
        for n in args.workers:
            workers = start_workers(n, args.threads, tmp)
            small = ds.limit(n * 4)
            timed_run(small, args, encoder, f"warmup{n}", n)  # every worker imports torch
            run = timed_run(ds, args, encoder, f"w{n}", n)
            run["workers"] = n
            results["runs"].append(run)
            stop(workers)
            workers = []
            print(f"{n} worker(s), {n} shard(s): {run['images_per_s']:.1f} images/s "
                  f"(wall {run['wall_s']:.1f} s)")
            for i, s in enumerate(run["shards"]):
                print(f"  shard {i}: queue->claim {s['queue_to_claim_s']:.2f} s, claim->lease "
                      f"{s['claim_to_lease_s']:.2f} s, images {s['images_s']:.2f} s ({s['images']})")
            print(f"  last shard done -> finalised {run['finalise_claim_s']:.2f} s; "
                  f"finalised -> record completed {run['record_completed_s']:.2f} s")
        results["load_avg_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"load average {results['load_avg_start']} -> {results['load_avg_end']}; wrote {args.out}")
    finally:
        stop(workers)
        import fiftyone.core.odm.database as food

        food._disconnect()
        mongod.terminate()
        mongod.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
