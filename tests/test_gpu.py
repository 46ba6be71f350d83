"""GPU paths: autocast precisions, the fast crop mode on the device,
exact-vs-fast agreement and device memory. Skipped without CUDA, except the
last test, which runs the GPU check script's dry run on the CPU so the
script cannot rot.

Self-contained (runs with ``--noconftest`` on a GPU machine without MongoDB
or FiftyOne: ``bash bench/gpu_check.sh``).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tiny_model import register_tiny_config  # noqa: E402

from bifta_plugin.core.config import get_config  # noqa: E402
from bifta_plugin.engine.encoders import create_encoder  # noqa: E402
from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CLASSES = ["cat", "astronaut", "coffee", "rocket", "horse", "coins"]
DESCRIPTIONS = {c: [f"a photo of a {c}.", f"a {c}, up close.", f"a blurry {c}."] for c in CLASSES}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image
    from skimage import data

    out = tmp_path_factory.mktemp("gpu_photos")
    paths = []
    for i in range(24):
        name = ["chelsea", "astronaut", "coffee", "rocket", "coins", "camera"][i % 6]
        arr = getattr(data, name)()
        path = out / f"{i:02d}-{name}.jpg"
        Image.fromarray(arr).convert("RGB").save(path, quality=92)
        paths.append(str(path))
    return paths


def classifier(model, precision, crop_mode, **runtime):
    encoder = create_encoder(model, None, device="cuda", precision=precision, cache_dir=False)
    return BiftaClassifier(encoder, CLASSES, DESCRIPTIONS, get_config("bifta"),
                           RuntimeOptions(crop_mode=crop_mode, **runtime))


@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_precisions_agree_with_fp32(photos, precision):
    torch.manual_seed(0)
    fp32 = classifier("ViT-B-32", "fp32", "fast", batch_size=8)
    encoder = create_encoder("ViT-B-32", None, device="cuda", precision=precision, cache_dir=False)
    encoder.model.load_state_dict(fp32.encoder.model.state_dict())  # the same random weights
    low = BiftaClassifier(encoder, CLASSES, DESCRIPTIONS, get_config("bifta"),
                          RuntimeOptions(crop_mode="fast", batch_size=8))
    a, b = fp32.predict(photos), low.predict(photos)
    cos = [float(np.dot(x.embedding, y.embedding)) for x, y in zip(a, b)]
    assert min(cos) > 0.99, cos
    assert low.encoder.precision == precision
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.scores, y.scores, atol=2e-2)


@cuda
def test_fast_mode_on_the_gpu_matches_the_cpu_fast_mode(photos):
    torch.manual_seed(0)
    gpu = classifier("ViT-B-32", "fp32", "fast", batch_size=8)
    cpu_encoder = create_encoder("ViT-B-32", None, device="cpu", precision="fp32", cache_dir=False)
    cpu_encoder.model.load_state_dict(gpu.encoder.model.state_dict())
    cpu = BiftaClassifier(cpu_encoder, CLASSES, DESCRIPTIONS, get_config("bifta"),
                          RuntimeOptions(crop_mode="fast", batch_size=8))
    for x, y in zip(gpu.predict(photos[:6]), cpu.predict(photos[:6])):
        assert np.array_equal(x.boxes, y.boxes)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-3)


@cuda
def test_exact_and_fast_crop_modes_mostly_agree(photos):
    torch.manual_seed(0)
    fast = classifier("ViT-B-32", "fp32", "fast", batch_size=8)
    exact = BiftaClassifier(fast.encoder, CLASSES, DESCRIPTIONS, get_config("bifta"),
                            RuntimeOptions(crop_mode="exact", batch_size=8))
    a, b = fast.predict(photos), exact.predict(photos)
    cos = np.mean([float(np.dot(x.embedding, y.embedding)) for x, y in zip(a, b)])
    assert cos > 0.97, cos


@cuda
def test_device_memory_is_bounded_by_the_chunk_not_the_batch(photos):
    torch.manual_seed(0)
    peaks = {}
    for batch_size in (4, 24):
        clf = classifier("ViT-B-32", "bf16", "fast", batch_size=batch_size, view_batch_size=256)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        clf.predict(photos)
        peaks[batch_size] = torch.cuda.max_memory_allocated() - base
        del clf
        torch.cuda.empty_cache()
    # 6x the images per batch: at most a few MB more (per-image features and
    # sources), not 6x the views
    assert peaks[24] < peaks[4] * 1.5 + 64 * 2**20, peaks


def test_gpu_check_dry_run_writes_its_report(tmp_path):
    register_tiny_config()
    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "bench", "gpu_check.sh"), "--dry-run", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["dry_run"] is True
    assert {(r["method"], r["precision"]) for r in report["results"]} == {("wca", "fp32"), ("bifta", "fp32")}
    for r in report["results"]:
        assert r["failed"] == 0 and r["views"] > r["images"] and r["ratio"] > 0
        assert r["gflops_per_view"] > 0 and r["decode_images_per_s"] > 0
    assert "e2e/enc" in done.stdout
