"""Cutting the views of an image: the global view plus its crops.

Two crop modes:

- ``exact``: the reference's preprocessing. Each crop is cut from the
  original PIL image (``image.crop(box)``) and goes through the model's own
  eval transform. The transform is split at its ``ToTensor`` step: the PIL
  stage (resize, centre crop, RGB conversion) runs in DataLoader workers and
  yields uint8 arrays (4x less to move than floats); ``ToTensor`` and
  ``Normalize`` run on the device with the same float operations, so the
  result is bit-identical to calling the transform on the crop.
- ``fast``: the image is decoded once and sent to the device as uint8; every
  view of a batch is cut and resized there in one
  ``torchvision.ops.roi_align`` call (bilinear sampling, averaged over
  ``ceil(crop/size)`` samples per output pixel, which acts as an
  anti-aliasing box filter when downscaling). The reference resizes with
  antialiased bicubic, so pixel values differ slightly; the benchmark reports
  how often the two modes' predictions agree. Images whose shorter side is
  much larger than needed are first downscaled in the worker so that the
  smallest possible crop still has at least ``size`` pixels per side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

@dataclass(frozen=True)
class PreprocessPlan:
    """The model's eval transform, split into a PIL stage and a tensor stage.

    Attributes:
        pil_stage: PIL image -> PIL image of ``size x size`` (every step of
            the model's transform before ``ToTensor``).
        mean, std: the ``Normalize`` step's per-channel values.
        size: output side S.
        resize_mode: open_clip's global-view rule ("shortest": resize the
            shorter side then centre-crop; "squash": resize to a square).
    """

    pil_stage: Callable
    mean: tuple
    std: tuple
    size: int
    resize_mode: str = "shortest"


def split_preprocess(preprocess, resize_mode: str = "shortest") -> PreprocessPlan:
    """Split a torchvision ``Compose`` eval transform at its ``ToTensor`` step.

    Raises:
        ValueError: the transform is not ``[PIL steps..., ToTensor, Normalize]``.
    """
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    names = [type(s).__name__ for s in steps]
    to_tensor = [i for i, n in enumerate(names) if n in ("ToTensor", "MaybeToTensor")]
    if not to_tensor or names[-1] != "Normalize" or to_tensor[0] != len(steps) - 2:
        raise ValueError(
            "unsupported preprocess transform (expected PIL steps, then "
            f"ToTensor, then Normalize); got {names}"
        )
    pil_steps = steps[: to_tensor[0]]
    size = _output_size(pil_steps)
    normalize = steps[-1]
    return PreprocessPlan(
        pil_stage=T.Compose(pil_steps),
        mean=tuple(float(m) for m in normalize.mean),
        std=tuple(float(s) for s in normalize.std),
        size=size,
        resize_mode=resize_mode,
    )


def _output_size(pil_steps) -> int:
    for step in reversed(pil_steps):
        size = getattr(step, "size", None)
        if size is not None:
            if isinstance(size, int):
                return size
            if len(size) == 2 and size[0] == size[1]:
                return int(size[0])
            if len(size) == 1:
                return int(size[0])
    raise ValueError("cannot find the output size of the preprocess transform")


def exact_view_pixels(
    image: Image.Image, boxes: Tensor, plan: PreprocessPlan
) -> np.ndarray:
    """The global view and every crop through the model's PIL stage.

    Args:
        image: RGB PIL image at its original resolution.
        boxes: Tensor[K, 4] integer pixel boxes ``(l, t, r, b)``.
        plan: from :func:`split_preprocess`.

    Returns:
        uint8 array [1 + K, S, S, 3]; row 0 is the global view.
    """
    views = [plan.pil_stage(image)]
    views += [plan.pil_stage(image.crop(tuple(int(v) for v in b))) for b in boxes.tolist()]
    return np.stack([np.asarray(v.convert("RGB"), dtype=np.uint8) for v in views])


def normalize_pixels(pixels: Tensor, mean, std) -> Tensor:
    """uint8 views to normalised float32, as ``ToTensor`` + ``Normalize`` do.

    Args:
        pixels: Tensor[V, S, S, 3] uint8 (any device).

    Returns:
        Tensor[V, 3, S, S] float32 on the same device.
    """
    x = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    return (x - mean_t[:, None, None]) / std_t[:, None, None]


def global_view_box(width: int, height: int, resize_mode: str) -> list:
    """The region of the original image that the global view shows.

    "shortest": resize the shorter side to S then centre-crop S x S, which
    shows the central square of side ``min(W, H)``. "squash": the whole
    image. Returns float ``[l, t, r, b]``.
    """
    if resize_mode == "squash":
        return [0.0, 0.0, float(width), float(height)]
    if resize_mode != "shortest":
        raise ValueError(
            f"crop_mode 'fast' supports resize_mode 'shortest' or 'squash', not "
            f"{resize_mode!r}; use crop_mode='exact'"
        )
    side = min(width, height)
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    return [left, top, left + side, top + side]


def fast_source(
    image: Image.Image, size: int, min_crop_fraction: float
) -> tuple[np.ndarray, tuple]:
    """Decode once for the fast mode, downscaling oversized images.

    The smallest crop is ``min_crop_fraction * min(W, H)`` pixels; the image
    is shrunk (antialiased) only while that crop keeps at least ``size``
    pixels per side, so no view loses resolution it would have kept.

    Returns:
        (uint8 array [h, w, 3], (w / W, h / H)) to map original boxes.
    """
    width, height = image.size
    target_short = math.ceil(size / max(min_crop_fraction, 1e-6))
    if min(width, height) <= target_short:
        return np.array(image, dtype=np.uint8), (1.0, 1.0)
    factor = target_short / min(width, height)
    new = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = image.resize(new, Image.BILINEAR)
    return np.array(image, dtype=np.uint8), (new[0] / width, new[1] / height)


def fast_views(
    source: Tensor, boxes: Tensor, plan: PreprocessPlan
) -> Tensor:
    """Cut and resize every view of one image in one ``roi_align`` call.

    Args:
        source: Tensor[h, w, 3] uint8 on the target device.
        boxes: Tensor[V, 4] float ``(l, t, r, b)`` in ``source`` pixels.
        plan: the model's preprocessing plan (size, mean, std).

    Returns:
        Tensor[V, 3, S, S] float32, normalised.
    """
    from torchvision.ops import roi_align

    image = source.permute(2, 0, 1)[None].to(torch.float32).div(255)  # [1, 3, h, w]
    rois = torch.cat(
        [torch.zeros(boxes.shape[0], 1, device=source.device), boxes.to(source.device, torch.float32)],
        dim=1,
    )  # [V, 5]: batch index, l, t, r, b
    views = roi_align(
        image, rois, output_size=plan.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )  # [V, 3, S, S]
    mean = torch.as_tensor(plan.mean, dtype=torch.float32, device=views.device)
    std = torch.as_tensor(plan.std, dtype=torch.float32, device=views.device)
    return (views - mean[:, None, None]) / std[:, None, None]
