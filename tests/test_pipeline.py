"""End-to-end engine tests on real photos with a tiny random open_clip model."""

import numpy as np
import pytest
import torch
from PIL import Image

from bifta_plugin.core import crops as views
from bifta_plugin.core.config import get_config
from bifta_plugin.core.methods import list_methods
from bifta_plugin.engine.encoders import create_encoder
from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions

CLASSES = ["cat", "astronaut", "coffee", "rocket", "motorcycle", "horse", "camera", "coins"]
# Small crop counts keep the suite fast; the geometry is tested at full size
# in test_boxes.py.
SMALL = dict(num_candidates=12, max_views=12)


def descriptions_for(classes):
    return {
        c: [
            f"a photo of a {c}, seen up close.",
            f"a {c} in its usual surroundings.",
            f"the shape and colour of a {c}.",
            f"a {c} in its usual surroundings.",  # duplicate on purpose
        ]
        for c in classes
    }


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    torch.manual_seed(0)
    return create_encoder(tiny_model_name, None, device="cpu")


@pytest.fixture(scope="module")
def paths(sample_images):
    return [p for p, _ in sample_images]


def make(encoder, method="bifta", runtime=None, classes=CLASSES, **overrides):
    cfg = get_config(method, **{**(SMALL if method in ("wca", "bifta") else {}), **overrides})
    return BiftaClassifier(encoder, classes, descriptions_for(classes), cfg, runtime or RuntimeOptions(batch_size=4))


@pytest.mark.parametrize("method", list_methods())
def test_each_method_end_to_end(encoder, paths, method):
    clf = make(encoder, method)
    preds = clf.predict(paths)
    assert [p.index for p in preds] == list(range(len(paths)))
    for p in preds:
        assert p.ok, p.error
        assert p.label in CLASSES and CLASSES[p.label_index] == p.label
        assert p.scores.shape == p.logits.shape == p.probs.shape == (len(CLASSES),)
        assert p.probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert p.confidence == pytest.approx(p.probs.max())
        np.testing.assert_allclose(p.logits, encoder.logit_scale * p.scores, rtol=1e-5)
        assert 0 <= p.margin <= 1
        assert p.best_description in clf.text.texts[p.label_index]
        rel = p.relative_boxes()
        assert ((rel >= 0) & (rel <= 1)).all()
        assert (rel[:, 0] + rel[:, 2] <= 1 + 1e-9).all() and (rel[:, 1] + rel[:, 3] <= 1 + 1e-9).all()
        if method in ("wca", "bifta"):
            assert 1 <= len(p.boxes) <= 12 and len(p.crop_weights) == len(p.boxes)
            assert p.crop_weights.sum() == pytest.approx(1.0, abs=1e-5)
            assert 0 <= p.best_crop < len(p.boxes)
        else:
            assert len(p.boxes) == 0 and p.best_crop is None


def test_scores_equal_manual_recomputation(encoder, paths):
    """The batched pipeline equals encoding the views one by one and scoring by hand."""
    clf = make(encoder, "wca", runtime=RuntimeOptions(crop_mode="exact"))
    pred = clf.predict(paths[:1])[0]
    image = Image.open(paths[0]).convert("RGB")
    crops = [image] + [image.crop(tuple(b)) for b in pred.boxes.tolist()]
    feats = encoder.encode_images(torch.stack([encoder.preprocess(c) for c in crops]))
    k, ks = feats[0], feats[1:]
    w = torch.softmax(np.exp(4.0) * (ks @ k), 0)
    a = (w[:, None] * ks).sum(0)
    expected = (a / a.norm()) @ clf.text.class_embeddings.T
    np.testing.assert_allclose(pred.scores, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(pred.crop_weights, w.numpy(), atol=1e-5)


def test_exact_views_are_bit_identical_to_model_transform(encoder, paths):
    plan = views.split_preprocess(encoder.preprocess)
    image = Image.open(paths[1]).convert("RGB")
    boxes = torch.tensor([[0, 0, 100, 100], [37, 12, 300, 275]])
    ours = views.normalize_pixels(torch.from_numpy(views.exact_view_pixels(image, boxes, plan)), plan.mean, plan.std)
    reference = torch.stack(
        [encoder.preprocess(image)] + [encoder.preprocess(image.crop(tuple(b))) for b in boxes.tolist()]
    )
    assert torch.equal(ours, reference)


def test_fast_views_approximate_exact_views(encoder, paths):
    plan = views.split_preprocess(encoder.preprocess)
    image = Image.open(paths[0]).convert("RGB")
    w, h = image.size
    boxes = torch.tensor([[10, 20, 210, 220], [100, 50, 400, 350]])
    exact = views.normalize_pixels(torch.from_numpy(views.exact_view_pixels(image, boxes, plan)), plan.mean, plan.std)
    source, (sx, sy) = views.fast_source(image, plan.size, 0.5)
    all_boxes = torch.cat([torch.tensor([views.global_view_box(w, h, "shortest")]), boxes.double()])
    fast = views.fast_views(torch.from_numpy(source), all_boxes * torch.tensor([sx, sy, sx, sy]), plan)
    assert fast.shape == exact.shape
    # different resampling kernels: close on average, not equal
    assert (fast - exact).abs().mean() < 0.15


@pytest.mark.parametrize("runtime", [
    RuntimeOptions(batch_size=1, num_workers=0, view_batch_size=7),
    RuntimeOptions(batch_size=3, num_workers=2),
    RuntimeOptions(batch_size=16, num_workers=1, view_batch_size=1000),
])
def test_deterministic_whatever_batching_or_workers(encoder, paths, runtime):
    reference = make(encoder, "bifta", RuntimeOptions(batch_size=2, num_workers=0)).predict(paths)
    preds = make(encoder, "bifta", runtime).predict(paths)
    for a, b in zip(reference, preds):
        assert np.array_equal(a.boxes, b.boxes)
        assert a.label == b.label
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_boxes_follow_the_image_key_not_the_position(encoder, paths):
    clf = make(encoder, "bifta")
    forward = clf.predict(paths[:3])
    backward = clf.predict(paths[:3][::-1])[::-1]
    for a, b in zip(forward, backward):
        assert np.array_equal(a.boxes, b.boxes)
    other_seed = make(encoder, "bifta", seed=7).predict(paths[:1])[0]
    assert not np.array_equal(other_seed.boxes, forward[0].boxes)


def test_in_memory_images_with_keys_match_paths(encoder, paths):
    clf = make(encoder, "wca")
    from_paths = clf.predict(paths[:2])
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:2]]
    from_arrays = clf.predict(arrays, keys=paths[:2])
    for a, b in zip(from_paths, from_arrays):
        assert np.array_equal(a.boxes, b.boxes)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_tiny_and_non_square_images(encoder, sample_images):
    tiny = [p for p, _ in sample_images if p.endswith("tiny-cat.png")]
    assert Image.open(tiny[0]).size == (13, 7)
    for method in ("wca", "bifta"):
        pred = make(encoder, method).predict(tiny)[0]
        assert pred.ok and (pred.width, pred.height) == (13, 7)
        sides = pred.boxes[:, 2] - pred.boxes[:, 0]
        assert (sides >= 1).all() and (sides <= 7).all()
        assert (pred.boxes[:, 2] <= 13).all() and (pred.boxes[:, 3] <= 7).all()


def test_iou_threshold_one_keeps_all_candidates(encoder, paths):
    pred = make(encoder, "bifta", iou_threshold=1.0, num_candidates=30, max_views=100).predict(paths[:1])[0]
    assert len(pred.boxes) == 30


def test_description_refinement_drops_duplicates(encoder):
    clf = make(encoder, "bifta")
    wca = make(encoder, "wca")
    for kept, all_ in zip(clf.text.texts, wca.text.texts):
        assert len(all_) == 4 and len(kept) == 3  # the exact duplicate is gone
        assert len(set(kept)) == 3
    report = clf.text.refinement_report()
    assert report[0] == dict(label="cat", candidates=4, kept=3)
    keep_all = make(encoder, "bifta", desc_sim_threshold=1.0)
    assert all(len(t) == 4 for t in keep_all.text.texts)
    capped = make(encoder, "bifta", max_descriptions=2)
    assert all(len(t) == 2 for t in capped.text.texts)


def test_corrupt_image_is_reported_not_fatal(encoder, paths, corrupt_image):
    preds = make(encoder, "bifta").predict([paths[0], corrupt_image, paths[2]])
    assert preds[0].ok and preds[2].ok
    assert not preds[1].ok and preds[1].label is None
    assert "corrupt.jpg" in preds[1].error and "cannot read image" in preds[1].error


def test_missing_file_is_reported(encoder, tmp_path):
    preds = make(encoder, "clip").predict([str(tmp_path / "nope.jpg")])
    assert "nope.jpg" in preds[0].error


def test_resample_protocol(encoder, paths):
    clf = make(encoder, "bifta", protocol="resample", num_runs=5, num_draws=7)
    preds = clf.predict(paths[:2])
    for p in preds:
        assert len(p.run_labels) == 5 and all(0 <= r < len(CLASSES) for r in p.run_labels)
    again = clf.predict(paths[:2])
    np.testing.assert_allclose(preds[0].scores, again[0].scores, atol=1e-6)


def test_paper_score_form_runs_and_differs(encoder, paths):
    norm = make(encoder, "wca").predict(paths[:1])[0]
    paper = make(encoder, "wca", score_form="paper").predict(paths[:1])[0]
    assert not np.allclose(norm.scores, paper.scores)


def test_text_cache_second_build_encodes_nothing(encoder):
    make(encoder, "bifta", classes=["zebra", "yak"])
    before = encoder.num_texts_encoded
    make(encoder, "bifta", classes=["zebra", "yak"])
    assert encoder.num_texts_encoded == before


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="nope"), "Unknown method"),
        (dict(classes=[]), "empty"),
        (dict(classes=["cat", "dog", "cat"]), "duplicate class names"),
        (dict(iou_threshold=-0.5), "iou_threshold"),
        (dict(desc_sim_threshold=-1.0), "desc_sim_threshold"),
    ],
)
def test_bad_input_errors(encoder, kwargs, match):
    classes = kwargs.pop("classes", CLASSES)
    method = kwargs.pop("method", "bifta")
    with pytest.raises(ValueError, match=match):
        make(encoder, method, classes=classes, **kwargs)


def test_class_without_descriptions(encoder):
    desc = descriptions_for(["cat"])
    desc["dog"] = []
    cfg = get_config("wca")
    with pytest.raises(ValueError, match="no descriptions: 'dog'"):
        BiftaClassifier(encoder, ["cat", "dog"], desc, cfg)
    with pytest.raises(ValueError, match="needs class descriptions"):
        BiftaClassifier(encoder, ["cat", "dog"], None, cfg)


def test_bad_runtime_options():
    with pytest.raises(ValueError, match="crop_mode"):
        RuntimeOptions(crop_mode="fastest")
    with pytest.raises(ValueError, match="batch_size"):
        RuntimeOptions(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        RuntimeOptions(num_workers=-1)
