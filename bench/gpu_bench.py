"""GPU throughput benchmark: BiFTA / WCA end to end vs the pure encoder.

For each model x method x precision (``fast`` crop mode: views cut on the
device) it reports, on ~500 real photos (scikit-image's, repeated under
distinct names so every image draws its own crops):

- images/s and views/s end to end (decode in workers, cut, encode, score);
- ``e2e / encoder``: the same chunks through the encoder alone, from
  tensors already on the GPU (1.0 is the limit);
- the model FLOP/s achieved (FLOPs per view counted with
  ``torch.utils.flop_counter``) against the GPU's dense bf16 peak;
- decode images/s (DataLoader workers alone, no encoder);
- peak GPU memory.

``--dry-run`` runs the same code on the CPU with a tiny random model and a
few images, so the script is exercised in CI and cannot rot. Writes one
JSON (``--out``) and prints a table.

    python bench/gpu_bench.py --out bench/results/gpu.json
    python bench/gpu_bench.py --dry-run --out /tmp/gpu-dry.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_engine as be  # noqa: E402
from bifta_plugin.core.config import get_config  # noqa: E402
from bifta_plugin.engine.encoders import create_encoder  # noqa: E402
from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
TINY_CONFIG = HERE.parent / "tests" / "assets" / "bifta-tiny-test.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    p.add_argument("--methods", nargs="+", default=["wca", "bifta"])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp16"])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--view-batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=200)
    p.add_argument("--descriptions", default=None)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny random model, 6 images")
    p.add_argument("--out", default="gpu_bench.json")
    args = p.parse_args(argv)
    if args.dry_run:
        import open_clip

        open_clip.add_model_config(str(TINY_CONFIG))
        args.models, args.precisions, args.images = ["bifta-tiny-test"], ["fp32"], 6
        args.num_classes, args.batch_size = 5, 2
    return args


def flops_per_view(encoder) -> float:
    """Forward FLOPs of the image tower for one view."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=encoder.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder.model.encode_image(x)
    return float(counter.get_total_flops())


def decode_rate(clf: BiftaClassifier, paths: list) -> float:
    """Images/s of the DataLoader alone (decode, crop boxes, view prep)."""
    loader = clf._loader(paths, list(paths))
    start = time.perf_counter()
    count = sum(len(batch) for batch in loader)
    return count / (time.perf_counter() - start)


def peak_tflops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def bench_one(model_name, method, precision, paths, classes, table, args) -> dict:
    device = "cpu" if args.dry_run else "cuda"
    encoder = create_encoder(model_name, None, device=device, precision=precision, cache_dir=False)
    runtime = RuntimeOptions(batch_size=args.batch_size, view_batch_size=args.view_batch_size,
                             num_workers=args.num_workers, crop_mode="fast")
    start = time.perf_counter()
    clf = BiftaClassifier(encoder, classes, table, get_config(method), runtime)
    text_s = time.perf_counter() - start
    clf.predict(paths[: 2 * args.batch_size])  # warm-up: kernels, workers, allocator
    if clf.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(clf.device)
    sizes, restore = be.record_chunks(encoder)
    try:
        be.sync(clf.device)
        start = time.perf_counter()
        preds = clf.predict(paths)
        be.sync(clf.device)
        e2e = time.perf_counter() - start
    finally:
        restore()
    encoder_s = be.time_encoder_only(clf, sizes)
    views = sum(sizes)
    flops = flops_per_view(encoder)
    achieved = flops * views / encoder_s / 1e12
    peak = peak_tflops(clf.device)
    return dict(
        model=model_name, method=method, precision=encoder.precision, crop_mode=clf.crop_mode,
        text_path=encoder.text_path, images=len(paths), failed=sum(not p.ok for p in preds),
        views=views, views_per_image=views / len(paths), e2e_s=e2e, encoder_s=encoder_s,
        ratio=e2e / encoder_s, images_per_s=len(paths) / e2e, views_per_s=views / e2e,
        gflops_per_view=flops / 1e9, encoder_tflops=achieved,
        fraction_of_bf16_peak=None if peak is None else achieved / peak,
        decode_images_per_s=decode_rate(clf, paths), text_s=text_s,
        peak_gpu_mb=torch.cuda.max_memory_allocated(clf.device) / 2**20 if clf.device.type == "cuda" else None,
    )


def print_table(report) -> None:
    info = report["machine"]
    print(f"\nmachine: {info.get('gpu', info['device'])} | {info['cpu']} x{info['cpu_count']} | "
          f"torch {info['torch']}")
    head = ("model", "method", "prec", "img/s", "views/s", "views/img", "e2e/enc", "enc TFLOP/s",
            "of peak", "decode img/s", "GPU MB")
    rows = [(
        r["model"], r["method"], r["precision"], f"{r['images_per_s']:.1f}", f"{r['views_per_s']:.0f}",
        f"{r['views_per_image']:.1f}", f"{r['ratio']:.3f}", f"{r['encoder_tflops']:.1f}",
        "-" if r["fraction_of_bf16_peak"] is None else f"{r['fraction_of_bf16_peak']:.0%}",
        f"{r['decode_images_per_s']:.0f}", "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}",
    ) for r in report["results"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))


def main(argv=None):
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_bench.py: no CUDA device (use --dry-run to exercise it on the CPU)")
    ns = argparse.Namespace(descriptions=args.descriptions, num_classes=args.num_classes)
    classes, table = be.load_classes(ns)
    results = []
    with tempfile.TemporaryDirectory(prefix="bifta-gpu-bench-") as tmp:
        paths = be.write_images(args.images, Path(tmp))
        for model_name in args.models:
            for precision in args.precisions:
                for method in args.methods:
                    results.append(bench_one(model_name, method, precision, paths, classes, table, args))
                    print(json.dumps(results[-1]), flush=True)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
    info = dict(be.machine_info(create_encoder(args.models[0], None, device="cpu", cache_dir=False)),
                device="cpu" if args.dry_run else "cuda")
    if not args.dry_run:
        info["gpu"] = torch.cuda.get_device_name(0)
    report = dict(machine=info, args=vars(args), dry_run=args.dry_run, results=results)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
