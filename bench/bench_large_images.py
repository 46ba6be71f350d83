"""Large JPEGs: seconds per image in exact mode, exact + jpeg_draft, and fast mode.

Writes one photo (scikit-image's astronaut, upscaled) as an N-megapixel JPEG
and times ``BiftaClassifier.predict`` on it per mode, after one warm-up pass.
The encoder is the tiny test model by default (64 px input, random weights),
so the numbers isolate decoding, cropping and resizing, which is what the
modes change; with a real backbone add its (mode-independent) encoder time.

Example::

    python bench/bench_large_images.py --megapixels 48
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bifta_plugin.core.config import get_config  # noqa: E402
from bifta_plugin.engine.encoders import create_encoder  # noqa: E402
from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions  # noqa: E402


def write_photo(path: Path, megapixels: float) -> tuple[int, int]:
    from PIL import Image
    from skimage import data

    height = int(math.sqrt(megapixels * 1e6 * 3 / 4))
    width = int(height * 4 / 3)
    Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC).save(path, quality=92)
    return width, height


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--megapixels", type=float, default=48)
    p.add_argument("--model", default=None, help="open_clip model (default: the tiny test model)")
    p.add_argument("--method", default="bifta")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    if args.model is None:
        from tiny_model import register_tiny_config

        args.model = register_tiny_config()
    encoder = create_encoder(args.model, None, device="cpu", cache_dir=False)
    classes = ["astronaut", "cat", "rocket"]
    descriptions = {c: [f"a photo of a {c}.", f"a {c} in detail."] for c in classes}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.jpg"
        size = write_photo(path, args.megapixels)
        print(f"{path.name}: {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.1f} MP), "
              f"model {args.model}, method {args.method}")
        ref = None
        for name, runtime in [
            ("exact", dict(crop_mode="exact")),
            ("exact + jpeg_draft", dict(crop_mode="exact", jpeg_draft=True)),
            ("fast", dict(crop_mode="fast")),
        ]:
            clf = BiftaClassifier(encoder, classes, descriptions, get_config(args.method),
                                  RuntimeOptions(batch_size=1, num_workers=0, **runtime))
            clf.predict([str(path)])  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                pred = clf.predict([str(path)])[0]
                times.append(time.perf_counter() - start)
            ref = pred.scores if ref is None else ref
            diff = float(np.abs(pred.scores - ref).max())
            print(f"  {name:20s} {min(times):7.2f} s/image  (max |score - exact| {diff:.4f}, "
                  f"label {pred.label})")


if __name__ == "__main__":
    main()
