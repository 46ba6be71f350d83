"""The batched post-encode tail equals the per-image reference it replaced.

``reference_outputs`` is the per-image code the engine used before its tail
was batched (one argmax, softmax, margin and ``scoring.best_pair`` per
image), kept here as the specification, as ``test_scoring.py`` keeps loops.
"""

import numpy as np
import pytest
import torch

from bifta_plugin.core import scoring
from bifta_plugin.core.config import get_config
from bifta_plugin.core.text import build_text_side
from bifta_plugin.engine.pipeline import (
    batch_outputs,
    gather_crops,
    pack_outputs,
    unpack_outputs,
)


def reference_outputs(scores, crops, weights, text, logit_scale):
    """Per image, as the engine did it: Tensor rows in, python values out."""
    logits = logit_scale * scores
    probs = torch.softmax(logits, dim=-1)
    c = int(torch.argmax(scores))
    mask = text.desc_mask[c]
    i, j, best = scoring.best_pair(crops, weights, text.desc_embeddings[c][mask], text.desc_weights[c][mask])
    j = int(torch.nonzero(mask)[j])  # index among all of the class's descriptions
    return dict(
        label=c, logits=logits.numpy(), probs=probs.numpy(), confidence=float(probs[c]),
        margin=float(scoring.top2_margin(probs)), best_crop=i, best_description=j, best_value=best,
    )


def random_text_side(gen, num_classes, dim, method="bifta"):
    classes = [f"class{c}" for c in range(num_classes)]
    # ragged description counts; a few texts repeat so refinement drops some
    descriptions = {
        c: [f"{c} text {k % 5}" for k in range(int(gen.integers(1, 9)))] for c in classes
    }
    table = {}

    def encode(texts):
        for t in texts:
            if t not in table:
                table[t] = torch.from_numpy(gen.standard_normal(dim)).float()
        return torch.stack([table[t] for t in texts])

    return build_text_side(get_config(method), classes, encode, descriptions)


def random_batch(gen, batch, dim, ties=False):
    num_crops = torch.from_numpy(gen.integers(1, 7, size=batch))
    counts = num_crops + 1
    features = torch.from_numpy(gen.standard_normal((int(counts.sum()), dim))).float()
    if ties:  # identical crops -> identical weights and contributions
        features[1:] = features[1]
    features = scoring.l2_normalize(features)
    starts = torch.cumsum(counts, 0) - counts
    return features, starts, num_crops


@pytest.mark.parametrize("case", range(40))
def test_batched_tail_equals_the_per_image_reference(case):
    gen = np.random.default_rng(case)
    dim = 16
    num_classes = int(gen.integers(1, 12))
    text = random_text_side(gen, num_classes, dim)
    batch = int(gen.integers(1, 9))
    features, starts, num_crops = random_batch(gen, batch, dim, ties=case % 5 == 0)
    crop_emb, mask = gather_crops(features, starts, num_crops, "cpu")
    reference_emb, reference_mask = scoring.pad_ragged(
        [features[s + 1 : s + 1 + k] for s, k in zip(starts.tolist(), num_crops.tolist())]
    )
    assert torch.equal(crop_emb, reference_emb) and torch.equal(mask, reference_mask)

    global_emb = features[starts]
    sims = scoring.crop_global_similarity(global_emb, crop_emb)
    image_vec, weights = scoring.aggregate_crops(crop_emb, sims, mask, 4.0, True)
    scores = scoring.class_scores(image_vec, text.class_embeddings)
    if case % 7 == 0 and num_classes > 1:
        scores[:, 1] = scores[:, 0]  # an exact tie between two classes
    logit_scale = 100.0
    out = batch_outputs(scores, crop_emb, weights, mask, text, logit_scale)
    host = unpack_outputs(pack_outputs(out, global_emb), num_classes, weights.shape[1], dim, 0)
    for b in range(batch):
        k = int(num_crops[b])
        ref = reference_outputs(scores[b], crop_emb[b][:k], weights[b][:k], text, logit_scale)

        def contribution(pair, k, b=b, c=ref["label"]):
            i, j = pair
            assert i < k and bool(text.desc_mask[c][j])
            t = text.desc_embeddings[c][j]
            return float(weights[b, i] * text.desc_weights[c][j] * (crop_emb[b, i] @ t))

        assert int(host["label"][b]) == ref["label"]
        pair = (int(host["best_crop"][b]), int(host["best_description"][b]))
        if case % 5 == 0:
            # identical crops: their contributions tie in exact arithmetic,
            # but a BLAS kernel may round rows of one matmul differently
            # (blocked vs remainder rows, CPU-dependent), so "first maximum"
            # is not defined across two matmuls; the pair must still be a
            # maximum, to float rounding
            assert contribution(pair, k) >= ref["best_value"] - 1e-6
        else:
            assert pair == (ref["best_crop"], ref["best_description"])
        assert np.array_equal(host["logits"][b], ref["logits"])
        assert np.array_equal(host["probs"][b], ref["probs"])
        assert float(host["confidence"][b]) == ref["confidence"]
        assert float(host["margin"][b]) == ref["margin"]
        assert np.array_equal(host["scores"][b], scores[b].numpy())
        assert np.array_equal(host["weights"][b, :k], weights[b, :k].numpy())
        assert np.array_equal(host["embedding"][b], global_emb[b].numpy())


def test_ties_pick_the_first_maximum_like_the_reference():
    gen = np.random.default_rng(1)
    text = random_text_side(gen, 3, 8)
    features, starts, num_crops = random_batch(gen, 2, 8, ties=True)
    crop_emb, mask = gather_crops(features, starts, num_crops, "cpu")
    weights = mask.float() / mask.sum(dim=1, keepdim=True)
    scores = torch.zeros(2, 3)  # every class tied
    out = batch_outputs(scores, crop_emb, weights, mask, text, 1.0)
    assert out["label"].tolist() == [0, 0]
    assert out["best_crop"].tolist() == [0, 0]  # all crops equal -> the first


def test_pack_round_trips_indices_and_run_labels():
    gen = np.random.default_rng(2)
    text = random_text_side(gen, 4, 8)
    features, starts, num_crops = random_batch(gen, 3, 8)
    crop_emb, mask = gather_crops(features, starts, num_crops, "cpu")
    weights = mask.float() / mask.sum(dim=1, keepdim=True)
    run_scores = torch.from_numpy(gen.standard_normal((3, 5, 4))).float()
    scores = run_scores.mean(dim=1)
    out = batch_outputs(scores, crop_emb, weights, mask, text, 10.0, run_scores)
    host = unpack_outputs(pack_outputs(out, features[starts]), 4, weights.shape[1], 8, 5)
    assert host["run_labels"].astype(int).tolist() == run_scores.argmax(dim=-1).tolist()
