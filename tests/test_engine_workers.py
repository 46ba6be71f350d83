"""Decode workers: the same results under every start method and loading
route, and memory bounded by the encoder chunk, not the batch."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bifta_plugin.core.config import get_config
from bifta_plugin.engine.encoders import create_encoder
from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "astronaut", "coffee", "rocket"]
DESCRIPTIONS = {c: [f"a photo of a {c}.", f"a blurry {c}."] for c in CLASSES}
SMALL = dict(num_candidates=10, max_views=8)


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    torch.manual_seed(0)
    return create_encoder(tiny_model_name, None, device="cpu")


def classifier(encoder, **runtime):
    return BiftaClassifier(
        encoder, CLASSES, DESCRIPTIONS, get_config("bifta", **SMALL), RuntimeOptions(**runtime)
    )


def summary(preds):
    return [(p.label, p.scores.tolist(), p.boxes.tolist(), p.best_crop) for p in preds]


def test_the_worker_payload_is_small_and_holds_no_model(encoder):
    clf = classifier(encoder)
    payload = pickle.dumps(clf.preparer)
    assert len(payload) < 20_000, len(payload)
    assert b"ClipEncoder" not in payload and b"BiftaClassifier" not in payload


@pytest.mark.slow
def test_spawn_fork_and_in_process_give_the_same_results(encoder, sample_images):
    paths = [p for p, _ in sample_images[:6]]
    in_process = summary(classifier(encoder, batch_size=2, num_workers=0).predict(paths))
    for context in ("fork", "spawn", "forkserver"):
        got = classifier(encoder, batch_size=2, num_workers=2, multiprocessing_context=context).predict(paths)
        assert summary(got) == in_process, context


_PLUGIN_RUN = textwrap.dedent(
    """
    import json, sys, torch
    import fiftyone.plugins.context as fpc
    sys.path.insert(0, {tests!r})
    from tiny_model import register_tiny_config
    name = register_tiny_config()
    assert "bifta_plugin" not in sys.modules
    contexts = fpc.build_plugin_contexts(enabled=True)
    (module_name,) = [m for m in sys.modules if m.startswith("fiftyone.plugins.") and m.endswith("bifta_copy")]
    import importlib
    pipeline = importlib.import_module(module_name + ".bifta_plugin.engine.pipeline")
    encoders = importlib.import_module(module_name + ".bifta_plugin.engine.encoders")
    config = importlib.import_module(module_name + ".bifta_plugin.core.config")
    torch.manual_seed(0)
    enc = encoders.create_encoder(name, None, device="cpu")
    clf = pipeline.BiftaClassifier(
        enc, {classes!r}, {descriptions!r}, config.get_config("bifta", **{small!r}),
        pipeline.RuntimeOptions(batch_size=2, num_workers=2, multiprocessing_context="spawn"),
    )
    preds = clf.predict({paths!r})
    print(json.dumps(dict(
        classifier_module=type(clf).__module__,
        canonical_file=sys.modules["bifta_plugin"].__file__,
        results=[(p.label, p.scores.tolist(), p.boxes.tolist(), p.best_crop) for p in preds],
        errors=[p.error for p in preds],
    )))
    """
)


@pytest.mark.slow
def test_spawned_workers_under_the_plugin_registry(encoder, sample_images, tmp_path):
    """Loaded by FiftyOne from a plugins folder, the package is not
    ``bifta_plugin``; spawned workers still import this copy's code."""
    plugin = tmp_path / "plugins" / "bifta_copy"
    shutil.copytree(os.path.join(REPO_ROOT, "bifta_plugin"), plugin / "bifta_plugin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("__init__.py", "fiftyone.yml"):
        shutil.copy(os.path.join(REPO_ROOT, name), plugin / name)
    yml = (plugin / "fiftyone.yml").read_text()
    (plugin / "fiftyone.yml").write_text(
        "\n".join("name: bifta_copy" if line.startswith("name:") else line for line in yml.splitlines())
    )
    paths = [p for p, _ in sample_images[:4]]
    script = _PLUGIN_RUN.format(
        tests=os.path.join(REPO_ROOT, "tests"), classes=CLASSES, descriptions=DESCRIPTIONS,
        small=SMALL, paths=paths,
    )
    env = dict(os.environ, FIFTYONE_PLUGINS_DIR=str(tmp_path / "plugins"))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["classifier_module"].startswith("fiftyone.plugins.")
    assert out["canonical_file"].startswith(str(plugin))  # the copy's code, not the installed one
    assert out["errors"] == [None] * len(paths)
    expected = summary(classifier(encoder, batch_size=2, num_workers=0).predict(paths))
    assert [tuple(r) for r in out["results"]] == [tuple(r) for r in expected]


@pytest.mark.parametrize("crop_mode", ["exact", "fast"])
def test_float_views_never_exceed_one_encoder_chunk(encoder, sample_images, monkeypatch, crop_mode):
    paths = [p for p, _ in sample_images[:6]]
    seen = []
    real = encoder.encode_images
    monkeypatch.setattr(encoder, "encode_images", lambda pixels: seen.append(pixels.shape[0]) or real(pixels))
    results = {}
    for batch_size in (1, 6):
        seen.clear()
        clf = classifier(encoder, batch_size=batch_size, num_workers=0, view_batch_size=5, crop_mode=crop_mode)
        results[batch_size] = clf.predict(paths)
        assert max(seen) <= 5
        # every view encoded once: 1 global + K crops per image
        assert sum(seen) == sum(1 + len(p.boxes) for p in results[batch_size])
    for a, b in zip(results[1], results[6]):
        assert a.label == b.label and np.allclose(a.scores, b.scores, atol=1e-6)


@pytest.mark.parametrize("crop_mode", ["exact", "fast"])
def test_prepared_pixels_are_released_before_the_batch_ends(encoder, sample_images, monkeypatch, crop_mode):
    """Host memory does not grow with batch_size: at every encoder call, at
    most one prepared entry (the one being cut) still holds its uint8 views
    or source region, at batch_size 1 and 6 alike."""
    import weakref

    from bifta_plugin.engine import prepare

    paths = [p for p, _ in sample_images[:6]]
    alive = []
    real_views = prepare.ViewPreparer._views

    def tracked(self, *args, **kwargs):
        item = real_views(self, *args, **kwargs)
        alive.append(weakref.ref(item.pixels if item.pixels is not None else item.source))
        return item

    monkeypatch.setattr(prepare.ViewPreparer, "_views", tracked)
    held = []
    real = encoder.encode_images

    def encode(pixels):
        held.append(sum(ref() is not None for ref in alive))
        return real(pixels)

    monkeypatch.setattr(encoder, "encode_images", encode)
    for batch_size in (1, 6):
        alive.clear(), held.clear()
        clf = classifier(encoder, batch_size=batch_size, num_workers=0, view_batch_size=5, crop_mode=crop_mode)
        preds = clf.predict(paths)
        assert all(p.ok for p in preds)
        assert len(alive) == len(paths) and held
        assert max(held) <= 1, (batch_size, held)
