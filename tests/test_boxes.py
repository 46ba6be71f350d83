"""Crop geometry: sampling, exact IoU, greedy filter (loop vs vectorised)."""

import numpy as np
import pytest
import torch

from bifta_plugin.core import boxes as box_ops


def naive_iou(a, b):
    """The reference's IoU, literally (docs/METHOD.md §3.3)."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union else 0.0


def naive_filter(boxes, threshold, cap):
    """Greedy filter as the method states it (a cap of K keeps K)."""
    kept = [0]
    for i in range(1, len(boxes)):
        if len(kept) >= cap:
            break
        if max(naive_iou(boxes[i], boxes[k]) for k in kept) <= threshold:
            kept.append(i)
    return kept


def random_boxes(n, seed, size=(500, 375)):
    gen = np.random.default_rng(seed)
    return box_ops.sample_square_boxes(*size, n, 0.1, 0.9, gen)


@pytest.mark.parametrize("seed", range(5))
def test_iou_matches_naive_loop(seed):
    boxes = random_boxes(30, seed)
    iou = box_ops.box_iou_exact(boxes, boxes)
    listed = boxes.tolist()
    for i in range(30):
        for j in range(30):
            assert iou[i, j].item() == naive_iou(listed[i], listed[j])


def test_iou_zero_area_and_disjoint():
    zero = torch.tensor([[5, 5, 5, 5]])
    assert box_ops.box_iou_exact(zero, zero).item() == 0.0
    a, b = torch.tensor([[0, 0, 10, 10]]), torch.tensor([[10, 0, 20, 10]])
    assert box_ops.box_iou_exact(a, b).item() == 0.0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold,cap", [(0.5, 100), (0.85, 100), (0.85, 7), (0.9, 3), (1.0, 100)])
def test_greedy_filter_matches_naive_loop(seed, threshold, cap):
    boxes = random_boxes(100, seed)
    assert box_ops.greedy_iou_filter(boxes, threshold, cap) == naive_filter(boxes.tolist(), threshold, cap)


def test_threshold_one_keeps_everything_up_to_cap():
    boxes = random_boxes(50, 0)
    boxes = torch.cat([boxes, boxes[:5]])  # exact duplicates have IoU 1.0 <= 1.0
    assert box_ops.greedy_iou_filter(boxes, 1.0, 1000) == list(range(55))
    assert box_ops.greedy_iou_filter(boxes, 1.0, 10) == list(range(10))


def test_cap_one_keeps_one():
    """Documented rule, not the reference quirk (which keeps 2)."""
    boxes = random_boxes(20, 1)
    assert box_ops.greedy_iou_filter(boxes, 0.99, 1) == [0]
    with pytest.raises(ValueError, match="max_keep"):
        box_ops.greedy_iou_filter(boxes, 0.99, 0)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (13, 7), (1, 1), (2, 300)])
def test_sampled_boxes_are_valid_squares(size):
    width, height = size
    boxes = box_ops.sample_square_boxes(width, height, 200, 0.1, 0.9, np.random.default_rng(0))
    sides = boxes[:, 2] - boxes[:, 0]
    assert torch.equal(sides, boxes[:, 3] - boxes[:, 1])
    assert (sides >= 1).all()
    assert (sides <= min(size)).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


def test_side_range_follows_scales_of_shorter_side():
    boxes = box_ops.sample_square_boxes(1000, 400, 2000, 0.5, 0.9, np.random.default_rng(3))
    sides = (boxes[:, 2] - boxes[:, 0]).numpy()
    assert sides.min() >= int(0.5 * 400) and sides.max() < 0.9 * 400
    # positions cover the whole valid range, not just the centre
    assert boxes[:, 0].min() < 20 and boxes[:, 2].max() > 980


def test_boxes_depend_only_on_seed_and_key():
    kwargs = dict(num_candidates=100, max_views=100, min_scale=0.5, max_scale=0.9, iou_threshold=0.85)
    a = box_ops.select_crop_boxes(640, 480, seed=42, key="img/a.jpg", **kwargs)
    b = box_ops.select_crop_boxes(640, 480, seed=42, key="img/a.jpg", **kwargs)
    c = box_ops.select_crop_boxes(640, 480, seed=42, key="img/b.jpg", **kwargs)
    d = box_ops.select_crop_boxes(640, 480, seed=7, key="img/a.jpg", **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_select_without_filter_keeps_first_candidates():
    kw = dict(num_candidates=30, min_scale=0.1, max_scale=0.9, seed=1, key="k")
    all_ = box_ops.select_crop_boxes(300, 200, max_views=30, iou_threshold=None, **kw)
    capped = box_ops.select_crop_boxes(300, 200, max_views=10, iou_threshold=None, **kw)
    assert torch.equal(all_[:10], capped)


def test_filtered_count_in_expected_range():
    """docs/METHOD.md §3.5: 500x375, 100 candidates, tau 0.85 keeps about 57-80."""
    counts = [
        len(box_ops.select_crop_boxes(500, 375, num_candidates=100, max_views=100, min_scale=0.5,
                                      max_scale=0.9, iou_threshold=0.85, seed=0, key=str(i)))
        for i in range(30)
    ]
    assert 55 <= np.mean(counts) <= 85


def test_relative_boxes():
    rel = box_ops.boxes_to_relative_xywh(torch.tensor([[50, 25, 150, 125]]), 200, 100)
    assert rel.tolist() == [[0.25, 0.25, 0.5, 1.0]]
