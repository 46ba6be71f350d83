"""Engine benchmark: throughput, end-to-end vs encoder-only time, text cache, memory.

For each method it measures, on the same images and the same machine:

- images/s and views/s of the whole pipeline (decode, crop, encode, score);
- the pure encoder time on the same number of views, fed in the same chunk
  sizes from tensors already on the device; ``e2e / encoder`` is the
  pipeline's overhead factor (1.0 is the limit);
- text encoding time cold (empty cache) vs cached (a second build of the
  same classes), with the number of texts actually encoded;
- peak resident memory (and peak GPU memory on CUDA);
- optionally (``--compare-crop-modes``) how often ``exact`` and ``fast`` crop
  modes predict the same label.

Runs anywhere: random weights (``--pretrained none``) are fine for speed.
Writes JSON (``--out``) and prints a table.

Example::

    python bench/bench_engine.py --model ViT-B-32 --pretrained none \
        --method bifta wca --images 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bifta_plugin.core.config import get_config  # noqa: E402
from bifta_plugin.core.methods import list_methods  # noqa: E402
from bifta_plugin.engine.encoders import create_encoder  # noqa: E402
from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions  # noqa: E402

SKIMAGE_PHOTOS = {
    "chelsea": "cat",
    "astronaut": "astronaut",
    "coffee": "coffee",
    "rocket": "rocket",
    "horse": "horse",
    "camera": "camera",
    "coins": "coins",
    "immunohistochemistry": "tissue",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help='"none" for random weights')
    p.add_argument("--model-config", help="extra open_clip model config JSON to register")
    p.add_argument("--method", nargs="+", default=["bifta"], help=f"any of {list_methods()} or 'all'")
    p.add_argument("--images", type=int, default=8, help="number of images")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--view-batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--crop-mode", default="auto")
    p.add_argument("--descriptions", help="CuPL-style JSON {class: [sentences]}; default: synthetic")
    p.add_argument("--num-classes", type=int, default=20, help="classes when synthetic")
    p.add_argument("--compare-crop-modes", action="store_true")
    p.add_argument("--repeat", "--repeats", type=int, default=1, dest="repeat",
                   help="timed passes per method; min and median are reported")
    p.add_argument("--text-batch-size", type=int, default=256)
    p.add_argument("--no-text-bench", action="store_true", help="skip full-context vs length-cut text timing")
    p.add_argument("--rss-batch-sizes", type=int, nargs="*", default=[],
                   help="peak RSS of fresh processes at these batch sizes (and --rss-images)")
    p.add_argument("--rss-images", type=int, nargs="*", default=None,
                   help="dataset sizes for the RSS probes (default: --images)")
    p.add_argument("--only-rss", action="store_true",
                   help="only the peak-memory probes (--rss-batch-sizes, --rss-images), no timing")
    p.add_argument("--probe-rss", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench_results.json")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return p.parse_args(argv)


def write_images(count: int, directory: Path) -> list[str]:
    """Real photos from scikit-image, repeated under distinct names (distinct crop keys)."""
    from PIL import Image
    from skimage import data

    arrays = []
    for name in SKIMAGE_PHOTOS:
        arr = getattr(data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        arrays.append(Image.fromarray(arr).convert("RGB"))
    paths = []
    for i in range(count):
        path = directory / f"img_{i:04d}.jpg"
        arrays[i % len(arrays)].save(path, quality=92)
        paths.append(str(path))
    return paths


def load_classes(args):
    if args.descriptions:
        table = json.loads(Path(args.descriptions).read_text())
        return list(table), table
    classes = [f"class {i}" for i in range(args.num_classes)]
    # ~30 sentences per class of varied length, like CuPL files
    table = {
        c: [f"A photo of {c} showing detail number {j} of its appearance" + ", and more" * (j % 7) + "."
            for j in range(30)]
        for c in classes
    }
    return classes, table


def overrides(args) -> dict:
    out = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record_chunks(encoder):
    """Wrap ``encoder.encode_images`` to record the chunk sizes it is fed;
    returns (the list, a function that restores the encoder)."""
    sizes = []
    real = encoder.encode_images

    def recording(pixels):
        sizes.append(int(pixels.shape[0]))
        return real(pixels)

    encoder.encode_images = recording
    return sizes, lambda: setattr(encoder, "encode_images", real)


def time_encoder_only(clf: BiftaClassifier, chunk_sizes: list) -> float:
    """Seconds to encode the same chunks (same sizes, same order) from
    tensors already on the device: the pipeline's lower bound."""
    size = clf.plan.size
    chunk = torch.randn(max(chunk_sizes), 3, size, size, device=clf.device)
    sync(clf.device)
    start = time.perf_counter()
    for n in chunk_sizes:
        clf.encoder.encode_images(chunk[:n])
    sync(clf.device)
    return time.perf_counter() - start


def time_text(encoder, texts: list, length_cut: bool, batch_size: int) -> float:
    """Cold text-encoding seconds for ``texts`` on one path."""
    saved = encoder.length_cut
    encoder.length_cut = length_cut and saved
    encoder.clear_text_cache()
    try:
        start = time.perf_counter()
        encoder.encode_texts(texts, batch_size=batch_size)
        return time.perf_counter() - start
    finally:
        encoder.length_cut = saved
        encoder.clear_text_cache()


def bench_method(method, encoder, classes, table, paths, args):
    runtime = RuntimeOptions(
        batch_size=args.batch_size,
        view_batch_size=args.view_batch_size,
        num_workers=args.num_workers,
        crop_mode=args.crop_mode,
    )
    cfg = get_config(method, **overrides(args))
    encoder.clear_text_cache()  # cold: nothing cached in memory (nor on disk: fresh dir)
    before = encoder.num_texts_encoded
    start = time.perf_counter()
    clf = BiftaClassifier(encoder, classes, table, cfg, runtime)
    text_cold = time.perf_counter() - start
    texts_cold = encoder.num_texts_encoded - before
    start = time.perf_counter()
    BiftaClassifier(encoder, classes, table, cfg, runtime)
    text_cached = time.perf_counter() - start
    texts_cached = encoder.num_texts_encoded - before - texts_cold

    clf.predict(paths[: min(2, len(paths))])  # warm-up (workers, kernels)
    if clf.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(clf.device)
    e2e, enc, preds = [], [], None
    for _ in range(args.repeat):
        # interleaved in one process: an e2e pass, then the pure encoder on
        # exactly the chunks that pass encoded, so load swings hit both
        sizes, restore = record_chunks(clf.encoder)
        try:
            sync(clf.device)
            start = time.perf_counter()
            preds = clf.predict(paths)
            sync(clf.device)
            e2e.append(time.perf_counter() - start)
        finally:
            restore()
        enc.append(time_encoder_only(clf, sizes))
    num_views = sum(1 + len(p.boxes) for p in preds if p.ok)
    reference_views = 1 + cfg.max_views if cfg.uses_crops else 1
    ratios = [a / b for a, b in zip(e2e, enc)]
    result = dict(
        method=method,
        crop_mode=clf.crop_mode,
        text_path=encoder.text_path,
        images=len(paths),
        views=num_views,
        views_per_image=num_views / len(paths),
        reference_views_per_image=reference_views,
        views_needed_over_encoded=num_views / len(paths) / reference_views,
        repeat=args.repeat,
        e2e_s=dict(min=min(e2e), median=float(np.median(e2e)), all=e2e),
        encoder_s=dict(min=min(enc), median=float(np.median(enc)), all=enc),
        ratio=dict(median=float(np.median(ratios)), min=min(ratios), all=ratios),
        images_per_s=len(paths) / float(np.median(e2e)),
        views_per_s=num_views / float(np.median(e2e)),
        text_cold_s=text_cold,
        texts_encoded_cold=texts_cold,
        text_cached_s=text_cached,
        texts_encoded_cached=texts_cached,
        peak_rss_mb=peak_rss_mb(),
        peak_gpu_mb=(torch.cuda.max_memory_allocated(clf.device) / 2**20 if clf.device.type == "cuda" else None),
    )
    if args.compare_crop_modes and cfg.uses_crops:
        result.update(compare_modes(encoder, classes, table, cfg, runtime, paths))
    return result


def bench_text(encoder, table, args) -> dict:
    """Cold text encoding of every description, full context vs length-cut."""
    texts = list(dict.fromkeys(t for group in table.values() for t in group))
    full = [time_text(encoder, texts, False, args.text_batch_size) for _ in range(args.repeat)]
    cut = [time_text(encoder, texts, True, args.text_batch_size) for _ in range(args.repeat)]
    return dict(
        texts=len(texts),
        text_path=encoder.text_path,
        full_context_s=float(np.median(full)),
        length_cut_s=float(np.median(cut)),
        speedup=float(np.median(full) / np.median(cut)),
    )


def rss_probe(args, batch_size: int, images: int) -> dict:
    """Peak RSS of a fresh process classifying ``images`` at ``batch_size``
    (ru_maxrss only grows, so each point needs its own process)."""
    import subprocess

    cmd = [
        sys.executable, __file__, "--probe-rss", "--model", args.model, "--pretrained", args.pretrained,
        "--method", args.method[0], "--images", str(images), "--batch-size", str(batch_size),
        "--device", args.device, "--crop-mode", args.crop_mode, "--num-classes", str(args.num_classes),
    ]
    if args.model_config:
        cmd += ["--model-config", args.model_config]
    if args.descriptions:
        cmd += ["--descriptions", args.descriptions]
    if args.num_workers is not None:
        cmd += ["--num-workers", str(args.num_workers)]
    if args.view_batch_size is not None:
        cmd += ["--view-batch-size", str(args.view_batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _pss_mb(pid: int) -> float:
    """Proportional set size of one process: shared pages (the torch
    libraries, shared-memory tensors handed from workers) counted once
    across the tree, not once per process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class TreeMemorySampler:
    """Samples the summed PSS of this process and its DataLoader workers
    every ``interval`` s in a thread; ``peak_mb`` is the largest sum seen."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> float:
        total = sum(_pss_mb(p) for p in _tree_pids(os.getpid()))
        self.peak_mb = max(self.peak_mb, total)
        return total

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def probe_rss_main(args) -> None:
    encoder = create_encoder(args.model, None if args.pretrained.lower() in ("none", "") else args.pretrained,
                             device=args.device, cache_dir=False)
    classes, table = load_classes(args)
    # a fixed worker count: the default picks 0 workers for short runs,
    # which would compare different configurations across batch sizes
    workers = 1 if args.num_workers is None else args.num_workers
    runtime = RuntimeOptions(batch_size=args.batch_size, num_workers=workers, crop_mode=args.crop_mode,
                             view_batch_size=args.view_batch_size)
    clf = BiftaClassifier(encoder, classes, table, get_config(args.method[0], **overrides(args)), runtime)
    with tempfile.TemporaryDirectory(prefix="bifta-bench-") as tmp:
        paths = write_images(args.images, Path(tmp))
        base = peak_rss_mb()
        with TreeMemorySampler() as tree:
            tree_before = tree.sample()
            for _ in clf.iter_predictions(paths):
                pass
    gpu = torch.cuda.max_memory_allocated() / 2**20 if encoder.device.type == "cuda" else None
    print(json.dumps(dict(batch_size=args.batch_size, images=args.images, num_workers=workers,
                          view_batch_size=clf.view_batch_size(),
                          rss_before_mb=base, peak_rss_mb=peak_rss_mb(), tree_pss_before_mb=tree_before,
                          peak_tree_pss_mb=tree.peak_mb, peak_gpu_mb=gpu)))


def compare_modes(encoder, classes, table, cfg, runtime, paths):
    labels = {}
    for mode in ("exact", "fast"):
        rt = RuntimeOptions(**{**runtime.__dict__, "crop_mode": mode})
        clf = BiftaClassifier(encoder, classes, table, cfg, rt)
        labels[mode] = [p.label for p in clf.predict(paths)]
    agree = np.mean([a == b for a, b in zip(labels["exact"], labels["fast"])])
    return dict(exact_fast_agreement=float(agree), agreement_images=len(paths))


def machine_info(encoder) -> dict:
    info = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(),
        cpu=_cpu_name(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=str(encoder.device),
        precision=encoder.precision,
        model=encoder.model_name,
        pretrained=encoder.pretrained,
    )
    if encoder.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(encoder.device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(report):
    info, results = report["machine"], report["results"]
    print(f"\nmachine: {info['cpu']} x{info['cpu_count']} | device {info['device']}"
          f"{' (' + info['gpu'] + ')' if 'gpu' in info else ''} | {info['precision']} | torch {info['torch']}")
    print(f"model: {info['model']} pretrained={info['pretrained']}"
          + (f" | repeat {results[0]['repeat']} (times: median [min])\n" if results else ""))
    head = ("method", "mode", "imgs", "views/img", "ref views/img", "img/s", "views/s", "e2e s",
            "enc s", "e2e/enc", "text cold s", "text cached s", "RSS MB", "GPU MB", "exact=fast")
    rows = []
    for r in results:
        rows.append((
            r["method"], r["crop_mode"], str(r["images"]), f"{r['views_per_image']:.1f}",
            f"{r['reference_views_per_image']}", f"{r['images_per_s']:.2f}", f"{r['views_per_s']:.1f}",
            f"{r['e2e_s']['median']:.2f} [{r['e2e_s']['min']:.2f}]",
            f"{r['encoder_s']['median']:.2f} [{r['encoder_s']['min']:.2f}]",
            f"{r['ratio']['median']:.3f}",
            f"{r['text_cold_s']:.2f} ({r['texts_encoded_cold']})",
            f"{r['text_cached_s']:.3f} ({r['texts_encoded_cached']})",
            f"{r['peak_rss_mb']:.0f}", "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}",
            "-" if "exact_fast_agreement" not in r else f"{r['exact_fast_agreement']:.0%}",
        ))
    if rows:
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
        print("-+-".join("-" * w for w in widths))
        for row in rows:
            print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
    text = report.get("text")
    if text:
        print(f"\ntext encoding, {text['texts']} texts cold: full context {text['full_context_s']:.2f} s, "
              f"length-cut {text['length_cut_s']:.2f} s -> {text['speedup']:.2f}x ({text['text_path']})")
    for probe in report.get("rss", []):
        gpu = "" if probe["peak_gpu_mb"] is None else f", peak GPU {probe['peak_gpu_mb']:.0f} MB"
        print(f"peak memory, batch_size {probe['batch_size']:>3}, {probe['images']:>4} images, "
              f"{probe['num_workers']} worker(s), {probe['view_batch_size']} views per encoder chunk: main RSS {probe['peak_rss_mb']:.0f} MB "
              f"({probe['peak_rss_mb'] - probe['rss_before_mb']:+.0f} MB during the run), "
              f"main + workers PSS {probe['peak_tree_pss_mb']:.0f} MB "
              f"({probe['peak_tree_pss_mb'] - probe['tree_pss_before_mb']:+.0f} MB){gpu}")


def main(argv=None):
    args = parse_args(argv)
    if args.model_config:
        import open_clip

        open_clip.add_model_config(args.model_config)
    if args.probe_rss:
        probe_rss_main(args)
        return
    methods = list_methods() if args.method == ["all"] else args.method
    pretrained = None if args.pretrained.lower() in ("none", "random", "") else args.pretrained
    encoder = create_encoder(args.model, pretrained, device=args.device, precision=args.precision,
                             cache_dir=tempfile.mkdtemp(prefix="bifta-bench-cache-"))
    classes, table = load_classes(args)
    results = []
    if not args.only_rss:  # the probes write their own images in their own processes
        with tempfile.TemporaryDirectory(prefix="bifta-bench-") as tmp:
            paths = write_images(args.images, Path(tmp))
            results = [bench_method(m, encoder, classes, table, paths, args) for m in methods]
    report = dict(machine=machine_info(encoder), args=vars(args), results=results)
    if not args.no_text_bench and not args.only_rss:
        report["text"] = bench_text(encoder, table, args)
    report["rss"] = [
        rss_probe(args, b, n) for n in (args.rss_images or [args.images]) for b in args.rss_batch_sizes
    ]
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
