"""Tests for bifta_plugin.engine.encoders: tiny open_clip config, CPU, offline."""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from bifta_plugin.engine import encoders
from bifta_plugin.engine.encoders import (
    ClipEncoder,
    create_encoder,
    resolve_device,
    resolve_precision,
)
from tiny_model import register_tiny_config, save_tiny_checkpoint

TEXTS = ["a photo of a cat.", "a photo of a dog.", "a red car"]
LONG_TEXT = " ".join(["a very long description of a cat"] * 10)


@pytest.fixture(scope="module")
def tiny_name():
    return register_tiny_config()


@pytest.fixture(scope="module")
def checkpoint(tiny_name, tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def encoder(tiny_name, checkpoint, tmp_path):
    return create_encoder(
        tiny_name, str(checkpoint), device="cpu", cache_dir=tmp_path
    )


def _is_unit(features: torch.Tensor) -> bool:
    norms = features.norm(dim=-1)
    return torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


# --- device and precision ----------------------------------------------------


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    auto = resolve_device("auto")
    assert resolve_device(None) == auto
    if expected:
        assert auto.type == expected
    elif not torch.backends.mps.is_available():
        assert auto == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU machine")
def test_resolve_device_cuda_absent():
    with pytest.raises(ValueError, match="torch.cuda.is_available"):
        resolve_device("cuda")


def test_resolve_device_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"cuda:3 requested but only 1"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "", 3, "meta"])
def test_resolve_device_unknown(bad):
    with pytest.raises(ValueError, match="device"):
        resolve_device(bad)


@pytest.mark.parametrize(
    "precision, device, expected",
    [
        ("auto", "cpu", "fp32"),
        ("auto", "cuda", "fp16"),
        ("FP32", "cpu", "fp32"),
        ("fp16", "cuda", "fp16"),
    ],
)
def test_resolve_precision(precision, device, expected):
    assert resolve_precision(precision, torch.device(device)) == expected


@pytest.mark.parametrize(
    "precision, device, match",
    [
        ("fp16", "cpu", "needs a GPU"),
        ("bf16", "cpu", "needs a GPU"),
        ("half", "cpu", "unknown precision"),
        (None, "cpu", "unknown precision"),
    ],
)
def test_resolve_precision_errors(precision, device, match):
    with pytest.raises(ValueError, match=match):
        resolve_precision(precision, torch.device(device))


# --- loading -----------------------------------------------------------------


def test_encoder_attributes(encoder, tiny_name, checkpoint):
    assert encoder.model_name == tiny_name
    assert encoder.pretrained == str(checkpoint.resolve())
    assert encoder.device == torch.device("cpu")
    assert encoder.precision == "fp32"
    assert not encoder.is_random
    assert str(checkpoint.resolve()) in encoder.identity
    assert encoder.image_size == 64
    assert encoder.embed_dim == 64
    assert encoder.context_length == 16
    assert encoder.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)
    assert encoder.preprocess_cfg["interpolation"] == "bicubic"
    assert encoder.num_texts_encoded == 0
    assert not encoder.model.training


def test_local_checkpoint_loads_same_weights(tiny_name, checkpoint, tmp_path):
    import open_clip

    model = open_clip.create_model(tiny_name, pretrained=None)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    encoder = create_encoder(
        tiny_name, checkpoint, device="cpu", cache_dir=False
    )
    pixels = torch.randn(2, 3, 64, 64)
    tokens = encoder.tokenizer(TEXTS)
    with torch.no_grad():
        want_images = model.encode_image(pixels, normalize=True)
        want_texts = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(encoder.encode_images(pixels), want_images)
    torch.testing.assert_close(encoder.encode_texts(TEXTS), want_texts)


class _TypeErrorPayload:
    """Unpickles as ``OrderedDict(1, 2, 3)``: a TypeError under
    weights_only, on which open_clip would retry an unsafe torch.load."""

    def __reduce__(self):
        return (collections.OrderedDict, (1, 2, 3))


@pytest.mark.parametrize(
    "payload", [{"payload": print}, _TypeErrorPayload()], ids=["global", "te"]
)
def test_unsafe_checkpoint_is_refused(tiny_name, tmp_path, payload):
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        create_encoder(tiny_name, path, device="cpu", cache_dir=False)


def test_random_weights_warn(tiny_name, caplog):
    with caplog.at_level(logging.WARNING, logger=encoders.__name__):
        encoder = create_encoder(tiny_name, "random", device="cpu")
    assert encoder.is_random and encoder.pretrained is None
    assert "meaningless" in caplog.text
    assert encoder.text_cache_path is None  # never cached on disk
    other = create_encoder(tiny_name, None, device="cpu")
    assert other.identity != encoder.identity


def test_bogus_pretrained_tag(tiny_name):
    with pytest.raises(RuntimeError, match="no-such-tag") as info:
        create_encoder("ViT-B-32", "no-such-tag", device="cpu")
    assert "ViT-B-32" in str(info.value) and "openai" in str(info.value)


def test_known_tag_that_fails_to_download(monkeypatch):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("no network here")

    # What an offline machine sees; deterministic even with a warm HF cache.
    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="no network here") as info:
        create_encoder("ViT-B/32", "openai", device="cpu")
    assert "'ViT-B-32'" in str(info.value) and "'openai'" in str(info.value)


@pytest.mark.parametrize("name", ["ViT-B-33", "not a model", ""])
def test_unknown_model_name(name):
    with pytest.raises(ValueError, match="list_models"):
        create_encoder(name, None, device="cpu")


# --- images ------------------------------------------------------------------


def test_encode_images(encoder):
    image = Image.new("RGB", (90, 50), (200, 30, 30))
    pixels = torch.stack([encoder.preprocess(image)] * 3)
    assert pixels.shape == (3, 3, 64, 64)
    features = encoder.encode_images(pixels)
    assert features.shape == (3, 64)
    assert features.dtype == torch.float32
    assert features.device == encoder.device
    assert _is_unit(features)
    assert encoder.encode_images(pixels[:0]).shape == (0, 64)


@pytest.mark.parametrize(
    "pixels",
    [
        torch.zeros(3, 64, 64),
        torch.zeros(1, 3, 32, 32),
        torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
    ],
)
def test_encode_images_bad_input(encoder, pixels):
    with pytest.raises(ValueError, match=r"Tensor\[N, 3, 64, 64\]"):
        encoder.encode_images(pixels)


# --- texts and the text cache ------------------------------------------------


def test_encode_texts(encoder):
    features = encoder.encode_texts(TEXTS + [TEXTS[0]])
    assert features.shape == (4, 64)
    assert features.dtype == torch.float32
    assert features.device == torch.device("cpu")
    assert _is_unit(features)
    torch.testing.assert_close(features[0], features[3])
    assert encoder.num_texts_encoded == 3  # the duplicate is encoded once
    assert encoder.encode_texts([]).shape == (0, 64)


def test_encode_texts_batches_match(encoder, tiny_name, checkpoint):
    other = create_encoder(
        tiny_name, checkpoint, device="cpu", cache_dir=False
    )
    torch.testing.assert_close(
        encoder.encode_texts(TEXTS, batch_size=1), other.encode_texts(TEXTS)
    )


@pytest.mark.parametrize("texts", ["a cat", [1, 2], None])
def test_encode_texts_bad_input(encoder, texts):
    with pytest.raises(ValueError, match="texts"):
        encoder.encode_texts(texts)


def test_text_cache_memory_and_disk(encoder, tiny_name, checkpoint, tmp_path):
    first = encoder.encode_texts(TEXTS)
    assert encoder.num_texts_encoded == 3
    again = encoder.encode_texts(list(reversed(TEXTS)))
    assert encoder.num_texts_encoded == 3  # all from memory
    torch.testing.assert_close(again, first.flip(0))
    assert encoder.text_cache_path.parent == tmp_path
    assert encoder.text_cache_path.is_file()

    fresh = create_encoder(
        tiny_name, checkpoint, device="cpu", cache_dir=tmp_path
    )
    assert fresh.identity == encoder.identity
    from_disk = fresh.encode_texts(TEXTS)
    torch.testing.assert_close(from_disk, first, rtol=0, atol=0)
    assert fresh.num_texts_encoded == 0  # all from disk
    fresh.encode_texts(["a new text", TEXTS[1]])
    assert fresh.num_texts_encoded == 1

    # The new text was merged into the file, next to the old ones.
    third = create_encoder(
        tiny_name, checkpoint, device="cpu", cache_dir=tmp_path
    )
    third.encode_texts(TEXTS + ["a new text"])
    assert third.num_texts_encoded == 0


def test_text_cache_keyed_by_weights(tiny_name, tmp_path):
    a = save_tiny_checkpoint(tmp_path / "a.pt", seed=1)
    b = save_tiny_checkpoint(tmp_path / "b.pt", seed=2)
    cache = tmp_path / "cache"
    enc_a = create_encoder(tiny_name, a, device="cpu", cache_dir=cache)
    enc_b = create_encoder(tiny_name, b, device="cpu", cache_dir=cache)
    enc_a.encode_texts(TEXTS)
    enc_b.encode_texts(TEXTS)
    assert enc_b.num_texts_encoded == 3
    assert enc_a.text_cache_path != enc_b.text_cache_path


def test_corrupt_cache_file_is_ignored(
    encoder, tiny_name, checkpoint, tmp_path, caplog
):
    want = encoder.encode_texts(TEXTS)
    encoder.text_cache_path.write_bytes(b"not a torch file")
    fresh = create_encoder(
        tiny_name, checkpoint, device="cpu", cache_dir=tmp_path
    )
    with caplog.at_level(logging.WARNING, logger=encoders.__name__):
        got = fresh.encode_texts(TEXTS)
    assert "unreadable text cache" in caplog.text
    assert fresh.num_texts_encoded == 3
    torch.testing.assert_close(got, want)
    # ... and the file was rewritten, readable again.
    third = create_encoder(
        tiny_name, checkpoint, device="cpu", cache_dir=tmp_path
    )
    third.encode_texts(TEXTS)
    assert third.num_texts_encoded == 0


def test_clear_text_cache(encoder):
    encoder.encode_texts(TEXTS)
    encoder.clear_text_cache(disk=True)
    assert not encoder.text_cache_path.exists()
    encoder.encode_texts(TEXTS)
    assert encoder.num_texts_encoded == 6


def test_long_text_is_truncated_not_fatal(encoder):
    assert encoder.count_truncated(TEXTS) == 0
    assert encoder.count_truncated([LONG_TEXT, TEXTS[0], LONG_TEXT]) == 2
    features = encoder.encode_texts([LONG_TEXT, TEXTS[0]])
    assert features.shape == (2, 64) and _is_unit(features)


def test_count_truncated_boundary(encoder):
    # 14 BPE tokens + SOT + EOT = 16 = the context length: fits exactly.
    words = ["cat"] * 14
    assert encoder.count_truncated([" ".join(words)]) == 0
    assert encoder.count_truncated([" ".join(words + ["cat"])]) == 1


# --- wrapping a built model ------------------------------------------------


def test_from_open_clip(tiny_name, checkpoint):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        tiny_name, pretrained=str(checkpoint)
    )
    encoder = ClipEncoder.from_open_clip(
        model,
        preprocess,
        open_clip.get_tokenizer(tiny_name),
        model_name=tiny_name,
        pretrained=str(checkpoint),
        device="cpu",
        precision="auto",
        cache_dir=False,
    )
    assert encoder.precision == "fp32" and encoder.text_cache_path is None
    assert encoder.identity == encoders.weights_identity(
        tiny_name, str(checkpoint)
    )
    built = ClipEncoder.from_open_clip(
        model,
        model_name=tiny_name,
        pretrained=str(checkpoint),
        device="cpu",
        cache_dir=False,
    )
    image = Image.new("RGB", (64, 64), (0, 128, 255))
    torch.testing.assert_close(built.preprocess(image), preprocess(image))


@pytest.mark.slow  # a fresh interpreter imports torch: about 5 s
def test_import_is_cheap():
    code = (
        "import sys, bifta_plugin.engine.encoders; "
        "print('open_clip' in sys.modules, 'torchvision' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.stdout.split() == ["False", "False"]
