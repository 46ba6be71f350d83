"""Object patches in the engine: a box of an image classified as the image."""

import numpy as np
import pytest
import torch

from bifta_plugin.core.config import get_config
from bifta_plugin.engine import decode
from bifta_plugin.engine import prepare as prep
from bifta_plugin.engine.encoders import create_encoder
from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions
from bifta_plugin.engine.regions import Patch, PatchError, batch_groups, group_by_image

CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {c: [f"a photo of a {c}.", f"a close-up {c}."] for c in CLASSES}


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    torch.manual_seed(0)
    return create_encoder(tiny_model_name, None, device="cpu")


def classifier(encoder, batch_size=4, **runtime):
    cfg = get_config("bifta", num_candidates=10, max_views=6)
    return BiftaClassifier(
        encoder, CLASSES, DESCRIPTIONS, cfg, RuntimeOptions(batch_size=batch_size, num_workers=0, **runtime)
    )


def test_pixel_box_pads_clamps_and_refuses_tiny_boxes():
    assert Patch("a.jpg", (0.25, 0.5, 0.5, 0.25)).pixel_box(100, 40) == (25, 20, 75, 30)
    # padding 10% of the box on each side, clamped at the left/top border
    assert Patch("a.jpg", (0.0, 0.0, 0.5, 0.5), padding=0.1).pixel_box(100, 100) == (0, 0, 55, 55)
    with pytest.raises(PatchError, match=r"1 x 1 pixels in the 100 x 100 image, below min_size=8"):
        Patch("a.jpg", (0.5, 0.5, 0.01, 0.01)).pixel_box(100, 100)
    with pytest.raises(PatchError, match="no area"):
        Patch("a.jpg", (0.5, 0.5, 0.0, 0.2)).pixel_box(100, 100)
    with pytest.raises(PatchError, match="four finite numbers"):
        Patch("a.jpg", (0.5, float("nan"), 0.1, 0.2)).pixel_box(100, 100)
    with pytest.raises(ValueError, match="padding"):
        Patch("a.jpg", (0, 0, 1, 1), padding=-0.1)


def test_grouping_keeps_an_images_patches_together():
    sources = [Patch("a", (0, 0, 1, 1)), Patch("a", (0, 0, 0.5, 0.5)), "b.jpg", Patch("a", (0, 0, 1, 1))]
    assert group_by_image(sources) == [[0, 1], [2], [3]]
    assert batch_groups([[0, 1, 2], [3], [4], [5]], 2) == [[0], [1, 2], [3]]


def test_patch_equals_classifying_the_cut_out_image(encoder, sample_images, tmp_path):
    path = sample_images[0][0]  # cat.jpg, 451 x 300
    image = decode.open_rgb(path)
    box = (0.1, 0.2, 0.5, 0.6)
    patch = Patch(path, box, padding=0.05)
    left, top, right, bottom = patch.pixel_box(*image.size)
    cut = tmp_path / "cut.png"  # lossless: the same pixels as the patch
    image.crop((left, top, right, bottom)).save(cut)
    clf = classifier(encoder)
    (p_patch,) = clf.predict([patch], keys=["obj-1"])
    (p_image,) = clf.predict([str(cut)], keys=["obj-1"])
    assert p_patch.ok and p_image.ok
    assert (p_patch.width, p_patch.height) == (right - left, bottom - top)
    assert p_patch.origin == (left, top) and (p_patch.image_width, p_patch.image_height) == image.size
    assert np.array_equal(p_patch.boxes, p_image.boxes)
    assert np.array_equal(p_patch.scores, p_image.scores)
    assert p_patch.label == p_image.label and p_patch.best_crop == p_image.best_crop
    # crop boxes come back relative to the full image, so they draw on the sample
    rel = p_patch.relative_boxes()
    px = p_patch.boxes[0]
    assert rel[0] == pytest.approx(
        [(px[0] + left) / image.width, (px[1] + top) / image.height,
         (px[2] - px[0]) / image.width, (px[3] - px[1]) / image.height]
    )
    assert np.linalg.norm(p_patch.embedding) == pytest.approx(1.0, abs=1e-5)


def test_border_patch_tiny_box_and_unreadable_file_fail_alone(encoder, sample_images, corrupt_image):
    path = sample_images[1][0]
    sources = [
        Patch(path, (0.9, 0.9, 0.3, 0.3)),  # runs past the corner: clamped
        Patch(path, (0.5, 0.5, 1 / 512, 1 / 512)),  # 1 x 1 pixel
        Patch(path, (0.0, 0.0, 1.0, 1.0)),
        Patch(corrupt_image, (0.0, 0.0, 0.5, 0.5)),
    ]
    preds = classifier(encoder).predict(sources, keys=["a", "b", "c", "d"])
    assert [p.index for p in preds] == [0, 1, 2, 3]
    assert preds[0].ok and preds[0].origin == (460, 460) and (preds[0].width, preds[0].height) == (52, 52)
    assert not preds[1].ok and "below min_size" in preds[1].error and "1 x 1 pixels" in preds[1].error
    assert preds[2].ok and (preds[2].width, preds[2].height) == (512, 512)
    assert not preds[3].ok and "cannot read image" in preds[3].error


def test_patches_are_deterministic_across_batch_sizes_and_decoded_once(encoder, sample_images, monkeypatch):
    sources, keys = [], []
    for path, _ in sample_images[:3]:
        for k, box in enumerate([(0, 0, 0.5, 0.5), (0.3, 0.3, 0.6, 0.6), (0.5, 0.1, 0.5, 0.9)]):
            sources.append(Patch(path, box))
            keys.append(f"{path}/{k}")
    calls = []
    real = decode.decode_image
    monkeypatch.setattr(prep.decode, "decode_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    runs = {}
    for batch_size in (1, 2, 7):
        calls.clear()
        runs[batch_size] = classifier(encoder, batch_size=batch_size).predict(sources, keys)
        assert sorted(calls) == sorted(p for p, _ in sample_images[:3])  # once per image
    for batch_size in (2, 7):
        for a, b in zip(runs[1], runs[batch_size]):
            # batch composition changes the encoder's float sums by ~1 ulp
            assert a.label == b.label and np.allclose(a.scores, b.scores, atol=1e-6)
            assert np.array_equal(a.boxes, b.boxes) and np.allclose(a.embedding, b.embedding, atol=1e-6)


def test_whole_image_predictions_carry_their_embedding(encoder, sample_images):
    preds = classifier(encoder).predict([p for p, _ in sample_images[:3]])
    emb = np.stack([p.embedding for p in preds])
    assert emb.shape == (3, encoder.embed_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert all(p.origin == (0, 0) and (p.image_width, p.image_height) == (p.width, p.height) for p in preds)
    # the same vector the encoder gives the global view
    pixels = prep.crops.exact_view_pixels(decode.open_rgb(sample_images[0][0]), torch.zeros(0, 4, dtype=torch.int64), prep.crops.split_preprocess(encoder.preprocess))
    clf = classifier(encoder)
    direct = encoder.encode_images(prep.crops.normalize_pixels(torch.from_numpy(pixels), clf.plan.mean, clf.plan.std))
    np.testing.assert_allclose(preds[0].embedding, direct[0].numpy(), atol=1e-6)
