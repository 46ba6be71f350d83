"""Benchmark: the cost of ``embeddings_field``, and objects/s for patches.

Two measurements, each through :func:`bifta_plugin.sdk.run.run_bifta` on a
real FiftyOne dataset (a private ``mongod`` in a temp dir):

- ``embeddings``: the same run with and without ``embeddings_field``,
  alternated ``--repeats`` times (A B A B ...), each on a fresh copy of the
  dataset; the overhead is the median time with embeddings over the median
  without, minus one;
- ``patches``: ``--objects`` boxes per image through ``patches_field`` vs
  whole images, with the same views per item (``num_candidates`` and
  ``max_views`` fixed), reported as objects/s and images/s.

Images: the skimage photos, copied under distinct names (crops are keyed by
file path). Random weights are fine for speed. Prints a table and writes
JSON (``--out``).

Example::

    python bench/bench_beyond.py --images 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_shards import isolated_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "assets" / "bifta-tiny-test.json"
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "horse", "camera", "coins")
CLASSES = ["cat", "astronaut", "coffee", "rocket", "horse", "camera", "coins"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bifta-tiny-test",
                   help="open_clip model (default: the tests' tiny config)")
    p.add_argument("--method", default="bifta")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--objects", type=int, default=4, help="boxes per image (patches)")
    p.add_argument("--views", type=int, default=16, help="num_candidates = max_views")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", choices=("embeddings", "patches"), action="append", default=[])
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def write_images(folder: Path, count: int) -> list[str]:
    import numpy as np
    from PIL import Image
    from skimage import data

    paths = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        arr = getattr(data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        path = folder / f"{i:05d}-{name}.jpg"
        Image.fromarray(arr).convert("RGB").save(path, quality=90)
        paths.append(str(path))
    return paths


def make_dataset(paths: list[str], objects: int):
    import fiftyone as fo

    ds = fo.Dataset()
    boxes = [[0.05 + 0.9 * k / objects, 0.1, 0.9 / objects, 0.8] for k in range(objects)]
    ds.add_samples(
        fo.Sample(
            filepath=p,
            objects=fo.Detections(detections=[fo.Detection(label="obj", bounding_box=b)
                                              for b in boxes]),
        )
        for p in paths
    )
    return ds


def timed_run(ds, encoder, args, **output) -> float:
    from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions
    from bifta_plugin.sdk.run import run_bifta

    target = output.pop("target", None)
    label_field = output.pop("label_field", "pred")
    kwargs = {} if target is None else {"target": target}
    views = {} if args.method in ("clip", "ensemble", "descriptions") else dict(
        num_candidates=args.views, max_views=args.views)
    start = time.perf_counter()
    result = run_bifta(
        ds, CLASSES, ["a photo of a {}."],
        method=args.method,
        encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(batch_size=args.batch_size, num_workers=0),
        output=OutputSpec(label_field, **output),
        progress=False,
        **views,
        **kwargs,
    )
    seconds = time.perf_counter() - start
    assert result.num_failed == 0, result.failures[:3]
    return seconds


def bench_embeddings(paths, encoder, args) -> dict:
    times = {"without": [], "with": []}
    for _ in range(args.repeats):
        for mode in ("without", "with"):
            ds = make_dataset(paths, 1)
            extra = {"embeddings_field": "emb"} if mode == "with" else {}
            times[mode].append(timed_run(ds, encoder, args, **extra))
            ds.delete()
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    return dict(
        seconds=times,
        median_without_s=without,
        median_with_s=with_,
        images_per_s_without=len(paths) / without,
        images_per_s_with=len(paths) / with_,
        overhead_pct=100.0 * (with_ / without - 1.0),
    )


def bench_patches(paths, encoder, args) -> dict:
    from bifta_plugin.sdk.options import TargetSpec

    images, patches = [], []
    for _ in range(args.repeats):
        ds = make_dataset(paths, args.objects)
        images.append(timed_run(ds, encoder, args))
        patches.append(timed_run(ds, encoder, args, label_field="pred_obj",
                                 target=TargetSpec(patches_field="objects")))
        ds.delete()
    t_img, t_obj = statistics.median(images), statistics.median(patches)
    num_objects = len(paths) * args.objects
    return dict(
        seconds_images=images,
        seconds_patches=patches,
        images_per_s=len(paths) / t_img,
        objects_per_s=num_objects / t_obj,
        objects_per_image=args.objects,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bifta-bench-beyond-"))
    mongod = isolated_env(tmp)
    try:
        from bifta_plugin.engine.encoders import create_encoder
        from bifta_plugin.sdk.options import register_model_configs

        if args.model == TINY_CONFIG.stem:
            register_model_configs(TINY_CONFIG)
        encoder = create_encoder(args.model, None, device="cpu", cache_dir=False)
        (tmp / "images").mkdir()
        paths = write_images(tmp / "images", args.images)
        timed_run(make_dataset(paths[:4], 1), encoder, args)  # warm-up
        report = dict(
            machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
            args={k: str(v) for k, v in vars(args).items()},
        )
        if "embeddings" not in args.skip:
            report["embeddings"] = e = bench_embeddings(paths, encoder, args)
            print(f"embeddings: {e['images_per_s_without']:.1f} images/s without, "
                  f"{e['images_per_s_with']:.1f} with; overhead {e['overhead_pct']:+.1f}%")
        if "patches" not in args.skip:
            report["patches"] = p = bench_patches(paths, encoder, args)
            print(f"patches: {p['images_per_s']:.1f} images/s whole images, "
                  f"{p['objects_per_s']:.1f} objects/s ({args.objects} per image), "
                  f"{args.views} views per item")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
    finally:
        mongod.terminate()
        mongod.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
