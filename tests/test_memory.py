"""Peak host memory of a run does not grow with batch_size or the number of
images: measured with real RSS in fresh processes (``ru_maxrss`` only
grows, so each point is its own process), through the benchmark's probe.

The model is the tiny test model at 224 px input, so views are as large as
ViT-B-32's (150 KB each as uint8, 600 KB as floats) while encoding stays
cheap; one DataLoader worker, 64 views per encoder chunk.
"""

import json
import os
import subprocess
import sys

import pytest

from tiny_model import TINY_CONFIG_PATH

pytestmark = pytest.mark.slow

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO_ROOT, "bench", "bench_engine.py")
#: headroom for allocator noise; a batch of 32 images' uint8 views alone is
#: ~330 MB, a heap that keeps growing with the run was +200 to +600 MB
TOLERANCE_MB = 60


@pytest.fixture(scope="module")
def config_224(tmp_path_factory):
    config = json.loads(TINY_CONFIG_PATH.read_text())
    config["vision_cfg"].update(image_size=224, patch_size=32)
    path = tmp_path_factory.mktemp("model") / "bifta-tiny-224.json"
    path.write_text(json.dumps(config))
    return path


def probe(config, batch_size, images):
    done = subprocess.run(
        [
            sys.executable, BENCH, "--probe-rss", "--model", config.stem, "--model-config", str(config),
            "--method", "bifta", "--images", str(images), "--batch-size", str(batch_size),
            "--num-workers", "1", "--view-batch-size", "64", "--device", "cpu", "--crop-mode", "exact",
        ],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_peak_rss_is_flat_in_batch_size_and_dataset_size(config_224):
    small = probe(config_224, batch_size=2, images=16)
    wide = probe(config_224, batch_size=32, images=16)
    long = probe(config_224, batch_size=2, images=64)
    peaks = {k: round(p["peak_rss_mb"]) for k, p in dict(small=small, wide=wide, long=long).items()}
    assert abs(wide["peak_rss_mb"] - small["peak_rss_mb"]) < TOLERANCE_MB, peaks
    assert abs(long["peak_rss_mb"] - small["peak_rss_mb"]) < TOLERANCE_MB, peaks
