"""WCA / BiFTA scoring: pure tensor functions.

Conventions (fixed once, for every function here):

- every ``*_embeddings`` argument is L2-normalised on its last dimension
  (call :func:`l2_normalize` on raw encoder features first);
- class embeddings are ``[C, D]`` (open_clip returns ``[D, C]``; we do not),
  logits are ``image_embeddings @ class_embeddings.T``;
- ragged sets (crops per image, descriptions per class) are padded tensors
  plus a boolean ``mask`` (True = real entry);
- temperatures are stored in log space as in the reference configs:
  ``lambda = exp(log_scale)``, taken in float32 as the reference does;
- weights and softmaxes are computed in float32 whatever the encoder's
  precision (the reference runs them in fp16 on GPU; ``docs/METHOD.md`` §10.7).

Formulas (``docs/METHOD.md`` §4-§6):

- visual weights ``w_i = softmax_i(lambda_v * k . k_i)`` over the crops used;
- textual weights ``v_j = softmax_j(lambda_t * t_j . t_c)`` with ``t_c`` the
  anchor "a photo of a {c}.";
- score ``S(x, c) = normalise(sum_i w_i k_i) . normalise(sum_j v_j t_j)``
  (the reference code), or the paper's unnormalised double sum
  ``sum_i sum_j w_i v_j k_i . t_j = a . u_c`` with ``score_form="paper"``.
  The two can rank classes differently (``||u_c||`` varies per class);
- baselines score the global view against the normalised mean of normalised
  text embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def l2_normalize(features: Tensor) -> Tensor:
    """``x / ||x||`` along the last dimension, as the reference does."""
    return features / features.norm(dim=-1, keepdim=True)


def log_scale_value(log_scale: float) -> Tensor:
    """``exp(log_scale)`` as a float32 scalar tensor (the reference's value)."""
    return torch.tensor(math.exp(log_scale), dtype=torch.float32)


def pad_ragged(per_row: list) -> tuple[Tensor, Tensor]:
    """Stack ragged ``[K_r, D]`` tensors into a padded tensor plus a mask.

    Args:
        per_row: R tensors of shape [K_r, D] on one device, ``K_r >= 1``.

    Returns:
        (Tensor[R, K_max, D] float32 zero-padded, Tensor[R, K_max] bool).
    """
    num_max = max(t.shape[0] for t in per_row)
    first = per_row[0]
    out = torch.zeros(len(per_row), num_max, first.shape[1], device=first.device)
    mask = torch.zeros(len(per_row), num_max, dtype=torch.bool, device=first.device)
    for r, t in enumerate(per_row):
        out[r, : t.shape[0]] = t
        mask[r, : t.shape[0]] = True
    return out, mask


def masked_softmax(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dimension, ignoring entries where ``mask`` is False.

    Args:
        logits: Tensor[..., K].
        mask: Tensor[..., K] bool, or None for no masking. Every row must
            hold at least one True entry.

    Returns:
        Tensor[..., K] with zeros at masked entries.
    """
    if mask is None:
        return torch.softmax(logits, dim=-1)
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("masked_softmax: a row has no valid entry")
    filled = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(filled, dim=-1)


def crop_global_similarity(
    global_embeddings: Tensor, crop_embeddings: Tensor
) -> Tensor:
    """Cosine of every crop to its image's global view, ``s_i = k . k_i``.

    Args:
        global_embeddings: Tensor[B, D].
        crop_embeddings: Tensor[B, K, D].

    Returns:
        Tensor[B, K].
    """
    return torch.einsum("bd,bkd->bk", global_embeddings, crop_embeddings)


def view_weights(
    crop_global_sims: Tensor,
    image_log_scale: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Visual weights ``w = softmax(lambda_v * s)`` over the valid crops.

    Args:
        crop_global_sims: Tensor[B, K], from :func:`crop_global_similarity`.
        image_log_scale: ``log(lambda_v)``; 4.0 in the reference.
        mask: Tensor[B, K] bool, True for real crops.

    Returns:
        Tensor[B, K] float32, rows summing to 1, zero at masked entries.
    """
    scale = log_scale_value(image_log_scale).to(crop_global_sims.device)
    return masked_softmax(scale * crop_global_sims.float(), mask)


def weighted_sum(features: Tensor, weights: Tensor) -> Tensor:
    """``sum_k weights_k * features_k``.

    Args:
        features: Tensor[..., K, D].
        weights: Tensor[..., K] (zero at padded entries).

    Returns:
        Tensor[..., D], not normalised.
    """
    return torch.einsum("...k,...kd->...d", weights, features.float())


def description_weights(
    desc_embeddings: Tensor,
    anchor_embeddings: Tensor,
    mask: Tensor | None = None,
    text_log_scale: float = 2.0,
) -> Tensor:
    """Textual weights ``v_j = softmax_j(lambda_t * t_j . t_c)`` per class.

    Args:
        desc_embeddings: Tensor[C, M, D] descriptions, padded.
        anchor_embeddings: Tensor[C, D] anchors ("a photo of a {c}.").
        mask: Tensor[C, M] bool, True for real descriptions.
        text_log_scale: ``log(lambda_t)``; 2.0 in the reference.

    Returns:
        Tensor[C, M] float32, rows summing to 1.
    """
    cos = torch.einsum("cmd,cd->cm", desc_embeddings.float(), anchor_embeddings.float())
    scale = log_scale_value(text_log_scale).to(cos.device)
    return masked_softmax(scale * cos, mask)


def mean_embeddings(features: Tensor, mask: Tensor | None = None) -> Tensor:
    """Baseline class embeddings: normalised mean of normalised texts.

    Args:
        features: Tensor[C, M, D] normalised text embeddings, padded.
        mask: Tensor[C, M] bool.

    Returns:
        Tensor[C, D], L2-normalised.
    """
    features = features.float()
    if mask is None:
        mean = features.mean(dim=1)
    else:
        m = mask.to(features.dtype)
        mean = (features * m[..., None]).sum(dim=1) / m.sum(dim=1, keepdim=True)
    return l2_normalize(mean)


def class_scores(image_vectors: Tensor, class_vectors: Tensor) -> Tensor:
    """Dot products of image vectors with class vectors.

    Args:
        image_vectors: Tensor[B, D].
        class_vectors: Tensor[C, D].

    Returns:
        Tensor[B, C] float32.
    """
    return image_vectors.float() @ class_vectors.float().T


def aggregate_crops(
    crop_embeddings: Tensor,
    crop_global_sims: Tensor,
    mask: Tensor | None,
    image_log_scale: float,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Weighted crop aggregate ``a = sum_i w_i k_i`` per image.

    Args:
        crop_embeddings: Tensor[B, K, D].
        crop_global_sims: Tensor[B, K].
        mask: Tensor[B, K] bool or None.
        image_log_scale: ``log(lambda_v)``.
        normalize: return ``a / ||a||`` (reference) rather than ``a``.

    Returns:
        (aggregate Tensor[B, D], weights Tensor[B, K]).
    """
    weights = view_weights(crop_global_sims, image_log_scale, mask)
    aggregate = weighted_sum(crop_embeddings, weights)
    if normalize:
        aggregate = l2_normalize(aggregate)
    return aggregate, weights


def gather_views(
    crop_embeddings: Tensor, crop_global_sims: Tensor, indices: Tensor
) -> tuple[Tensor, Tensor]:
    """Select crops by index, duplicates kept (the resampling protocol).

    Args:
        crop_embeddings: Tensor[B, K, D].
        crop_global_sims: Tensor[B, K].
        indices: Tensor[B, N] int64 into each image's crops.

    Returns:
        (Tensor[B, N, D], Tensor[B, N]).
    """
    emb = torch.gather(
        crop_embeddings,
        1,
        indices[..., None].expand(-1, -1, crop_embeddings.shape[-1]),
    )
    sims = torch.gather(crop_global_sims, 1, indices)
    return emb, sims


def top2_margin(values: Tensor) -> Tensor:
    """Top-1 minus top-2 along the last dimension (0 with one class).

    Args:
        values: Tensor[..., C].

    Returns:
        Tensor[...].
    """
    if values.shape[-1] < 2:
        return torch.zeros(values.shape[:-1], dtype=values.dtype)
    top = values.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def best_pair(
    crop_embeddings: Tensor,
    crop_weights: Tensor,
    desc_embeddings: Tensor,
    desc_weights: Tensor,
) -> tuple[int, int, float]:
    """The (crop, description) pair contributing most to a class score.

    The contribution of pair (i, j) is the paper's term
    ``w_i * v_j * (k_i . t_j)``.

    Args:
        crop_embeddings: Tensor[K, D] valid crops of one image.
        crop_weights: Tensor[K].
        desc_embeddings: Tensor[M, D] valid descriptions of one class.
        desc_weights: Tensor[M].

    Returns:
        (crop index, description index, contribution).
    """
    sims = crop_embeddings.float() @ desc_embeddings.float().T  # [K, M]
    contrib = crop_weights[:, None].float() * desc_weights[None, :].float() * sims
    flat = int(torch.argmax(contrib))
    i, j = divmod(flat, contrib.shape[1])
    return i, j, float(contrib[i, j])
