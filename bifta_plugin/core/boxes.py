"""Crop-box geometry: sampling, exact IoU, the greedy view filter.

Pure functions over integer pixel boxes ``(left, top, right, bottom)`` with
right/bottom exclusive (PIL's crop convention), ``0 <= left < right <= W``.
Imports only torch, numpy and hashlib; no images are touched here.

Sources (``docs/METHOD.md``):

- sampling, §3.1: square side ``int(U(alpha, beta) * min(W, H))``,
  top-left position uniform over every valid position, on the original
  (uncropped) image;
- IoU, §3.3: ``inter / union`` with no +1 pixel convention, 0 when the
  union is 0. Computed from exact integer areas in float64, so the result is
  the double nearest the exact ratio, as the reference's Python division is.
  A float32 IoU breaks ties at 0.85 (float32(17/20) > 0.85);
- greedy filter, §3.4: generation order, always keep the first, keep a
  later box when its largest IoU to the kept boxes is ``<= threshold``, stop
  once ``max_keep`` are kept.

Deviation (documented): the reference checks its cap only after accepting a
non-first box, so a cap of 1 keeps 2 boxes. We apply the cap as stated: a cap
of ``K`` keeps at most ``K`` boxes.

Determinism: the boxes of an image depend only on ``(seed, image key)``
through :func:`image_generator`, never on batch order, batch size or worker.
The reference draws with global numpy/torch RNGs inside DataLoader workers,
which cannot be reproduced (``docs/METHOD.md`` §9.5); fixtures feed boxes directly.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor


def image_generator(seed: int, key: str, stream: str = "crops") -> np.random.Generator:
    """A numpy generator seeded by ``(seed, key, stream)`` only.

    ``key`` is a stable image key (a file path or sample id). Python's
    ``hash`` is salted per process, so a SHA-256 digest is used instead.
    """
    digest = hashlib.sha256(f"{stream}\x00{key}".encode("utf-8")).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32).tolist()
    return np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, *words]))


def sample_square_boxes(
    width: int,
    height: int,
    num_boxes: int,
    min_scale: float,
    max_scale: float,
    generator: np.random.Generator,
) -> Tensor:
    """Draw square crop boxes on a ``width x height`` image.

    Side ``s = int(U(min_scale, max_scale) * min(W, H))`` (clamped to at
    least 1 pixel so tiny images still get valid boxes), then
    ``left ~ U{0..W-s}`` and ``top ~ U{0..H-s}``.

    Returns:
        Tensor[num_boxes, 4] int64 ``(left, top, right, bottom)``.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive; got {width}x{height}")
    short = min(width, height)
    fractions = generator.uniform(min_scale, max_scale, size=num_boxes)
    sides = np.maximum((fractions * short).astype(np.int64), 1)
    sides = np.minimum(sides, short)
    # integers(0, n + 1) draws from {0..n} inclusive, like randint(0, W - s).
    lefts = generator.integers(0, width - sides + 1)
    tops = generator.integers(0, height - sides + 1)
    boxes = np.stack([lefts, tops, lefts + sides, tops + sides], axis=1)
    return torch.from_numpy(boxes.astype(np.int64))


def box_area(boxes: Tensor) -> Tensor:
    """Areas of integer boxes.

    Args:
        boxes: Tensor[N, 4] ``(left, top, right, bottom)``.

    Returns:
        Tensor[N] int64.
    """
    boxes = boxes.to(torch.int64)
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (
        boxes[:, 3] - boxes[:, 1]
    ).clamp(min=0)


def box_iou_exact(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of integer boxes, as the double nearest the exact ratio.

    Intersections and unions are exact int64 values; one float64 division
    then rounds correctly, matching the reference's Python ``int / int``.

    Args:
        boxes1: Tensor[N, 4] integer pixel boxes.
        boxes2: Tensor[M, 4] integer pixel boxes.

    Returns:
        Tensor[N, M] float64; 0 where the union is 0.
    """
    boxes1 = boxes1.to(torch.int64)
    boxes2 = boxes2.to(torch.int64)
    area1 = box_area(boxes1)  # [N]
    area2 = box_area(boxes2)  # [M]
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (rb - lt).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area1[:, None] + area2[None, :] - inter  # [N, M]
    iou = inter.to(torch.float64) / union.clamp(min=1).to(torch.float64)
    return torch.where(union > 0, iou, torch.zeros_like(iou))


def greedy_filter(similarity: Tensor, threshold: float, max_keep: int) -> list[int]:
    """Greedy selection in index order over a pairwise similarity matrix.

    Item 0 is always kept; item ``i`` is kept when its largest similarity to
    the items kept so far is ``<= threshold``; the pass stops once
    ``max_keep`` items are kept. Shared by the view filter (IoU) and the
    description filter (cosine).

    Args:
        similarity: Tensor[N, N] symmetric pairwise similarities.
        threshold: keep when max similarity to kept ``<= threshold``.
        max_keep: cap on kept items (>= 1).

    Returns:
        Kept indices in order.
    """
    if max_keep < 1:
        raise ValueError(f"max_keep must be >= 1; got {max_keep}")
    sim = similarity.detach().cpu().to(torch.float64).numpy()
    n = sim.shape[0]
    if n == 0:
        return []
    kept = [0]
    # Running max similarity of every item to the kept set: one vector
    # update per kept item instead of a max over the kept list per item.
    max_to_kept = sim[0].copy()
    for i in range(1, n):
        if len(kept) >= max_keep:
            break
        if max_to_kept[i] <= threshold:
            kept.append(i)
            np.maximum(max_to_kept, sim[i], out=max_to_kept)
    return kept


def greedy_iou_filter(boxes: Tensor, iou_threshold: float, max_keep: int) -> list[int]:
    """BiFTA view refinement: greedy IoU filter in generation order.

    Args:
        boxes: Tensor[N, 4] integer pixel boxes in generation order.
        iou_threshold: keep a box when its max IoU to kept boxes is <= this.
        max_keep: queue cap Q (a cap of K keeps at most K boxes).

    Returns:
        Kept indices into ``boxes``, in order.
    """
    if boxes.shape[0] == 0:
        return []
    return greedy_filter(box_iou_exact(boxes, boxes), iou_threshold, max_keep)


def select_crop_boxes(
    width: int,
    height: int,
    *,
    num_candidates: int,
    max_views: int,
    min_scale: float,
    max_scale: float,
    iou_threshold: float | None,
    seed: int,
    key: str,
) -> Tensor:
    """The retained crop boxes of one image: sample, then filter.

    With ``iou_threshold=None`` (WCA) the first ``max_views`` candidates are
    kept. Filtering happens on boxes, before any pixel is cropped or
    encoded (the reference crops and encodes every candidate and pads the
    queue with zero images; ``docs/METHOD.md`` §10.5).

    Returns:
        Tensor[K, 4] int64 boxes, ``1 <= K <= max_views``.
    """
    generator = image_generator(seed, key)
    candidates = sample_square_boxes(
        width, height, num_candidates, min_scale, max_scale, generator
    )
    if iou_threshold is None:
        return candidates[:max_views]
    kept = greedy_iou_filter(candidates, iou_threshold, max_views)
    return candidates[kept]


def boxes_to_relative_xywh(boxes: Tensor, width: int, height: int) -> Tensor:
    """Pixel ``(l, t, r, b)`` boxes to FiftyOne's relative ``[x, y, w, h]``.

    Returns:
        Tensor[N, 4] float64 in [0, 1], top-left origin.
    """
    boxes = boxes.to(torch.float64)
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    rel = boxes / scale
    return torch.stack(
        [rel[:, 0], rel[:, 1], rel[:, 2] - rel[:, 0], rel[:, 3] - rel[:, 1]],
        dim=1,
    )
