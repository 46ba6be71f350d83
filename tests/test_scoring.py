"""Scoring math: vectorised functions against literal loops, masks, shapes."""

import math

import pytest
import torch

from bifta_plugin.core import scoring


def unit(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return scoring.l2_normalize(torch.randn(*shape, generator=gen))


def loop_wca_score(global_emb, crops, classes_desc, anchors, lv, lt):
    """Literal per-image, per-class loops of docs/METHOD.md §4-§6."""
    s = [float(global_emb @ k) for k in crops]
    z = sum(math.exp(lv * x) for x in s)
    w = [math.exp(lv * x) / z for x in s]
    a = sum(wi * k for wi, k in zip(w, crops))
    a = a / a.norm()
    out = []
    for descs, anchor in zip(classes_desc, anchors):
        c = [float(t @ anchor) for t in descs]
        zt = sum(math.exp(lt * x) for x in c)
        v = [math.exp(lt * x) / zt for x in c]
        u = sum(vj * t for vj, t in zip(v, descs))
        out.append(float(a @ (u / u.norm())))
    return out


def test_batched_masked_scores_match_loops():
    dim, num_classes = 24, 4
    counts = [5, 9, 3]  # ragged crops per image
    desc_counts = [2, 6, 1, 4]  # ragged descriptions per class
    descs = [unit(m, dim, seed=10 + c) for c, m in enumerate(desc_counts)]
    anchors = unit(num_classes, dim, seed=99)
    desc_emb, desc_mask = scoring.pad_ragged(descs)
    v = scoring.description_weights(desc_emb, anchors, desc_mask, 2.0)
    assert v.shape == (num_classes, max(desc_counts))
    assert torch.allclose(v.sum(1), torch.ones(num_classes))
    assert (v[~desc_mask] == 0).all()
    class_emb = scoring.l2_normalize(scoring.weighted_sum(desc_emb, v))

    globals_ = unit(len(counts), dim, seed=1)
    crops = [unit(k, dim, seed=20 + b) for b, k in enumerate(counts)]
    crop_emb, mask = scoring.pad_ragged(crops)
    sims = scoring.crop_global_similarity(globals_, crop_emb)
    agg, w = scoring.aggregate_crops(crop_emb, sims, mask, 4.0)
    assert w.shape == mask.shape and agg.shape == (len(counts), dim)
    scores = scoring.class_scores(agg, class_emb)
    assert scores.shape == (len(counts), num_classes)
    for b in range(len(counts)):
        expected = loop_wca_score(globals_[b], crops[b], descs, anchors, math.exp(4), math.exp(2))
        torch.testing.assert_close(scores[b], torch.tensor(expected), atol=1e-5, rtol=0)


def test_paper_form_equals_double_sum():
    dim = 8
    crops, descs = unit(6, dim, seed=1), unit(5, dim, seed=2)
    w = torch.softmax(torch.randn(6), 0)
    v = torch.softmax(torch.randn(5), 0)
    double_sum = sum(w[i] * v[j] * (crops[i] @ descs[j]) for i in range(6) for j in range(5))
    a = scoring.weighted_sum(crops[None], w[None])
    u = scoring.weighted_sum(descs[None], v[None])
    torch.testing.assert_close(scoring.class_scores(a, u)[0, 0], double_sum)


def test_masked_softmax_rejects_empty_rows():
    with pytest.raises(ValueError, match="no valid entry"):
        scoring.masked_softmax(torch.zeros(2, 3), torch.tensor([[True, False, False], [False] * 3]))


def test_mean_embeddings_ignores_padding():
    feats, mask = scoring.pad_ragged([unit(2, 4, seed=1), unit(3, 4, seed=2)])
    out = scoring.mean_embeddings(feats, mask)
    torch.testing.assert_close(out[0], scoring.l2_normalize(feats[0, :2].mean(0)))
    torch.testing.assert_close(out[1], scoring.l2_normalize(feats[1].mean(0)))


def test_gather_keeps_duplicates():
    emb = unit(1, 4, 3)
    sims = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    e, s = scoring.gather_views(emb, sims, torch.tensor([[3, 3, 0]]))
    assert torch.equal(s, sims[:, [3, 3, 0]]) and torch.equal(e[0, 0], e[0, 1])
    assert torch.equal(e[0, 2], emb[0, 0])


def test_top2_margin_and_single_class():
    assert scoring.top2_margin(torch.tensor([0.2, 0.7, 0.5])).item() == pytest.approx(0.2)
    assert scoring.top2_margin(torch.tensor([[0.9]])).tolist() == [0.0]


def test_best_pair_is_largest_contribution():
    crops, descs = unit(4, 6, seed=3), unit(3, 6, seed=4)
    w, v = torch.softmax(torch.randn(4), 0), torch.softmax(torch.randn(3), 0)
    i, j, c = scoring.best_pair(crops, w, descs, v)
    contrib = w[:, None] * v[None] * (crops @ descs.T)
    assert c == pytest.approx(float(contrib.max()))
    assert contrib[i, j] == contrib.max()


def test_temperature_is_reference_float32():
    assert scoring.log_scale_value(4.0).item() == 54.598148345947266
    assert scoring.log_scale_value(2.0).item() == 7.389056205749512
