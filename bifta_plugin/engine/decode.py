"""Decoding an image source to an RGB PIL image.

- EXIF orientation is applied by default, so the pixels (and the crop boxes
  drawn on them) are in the frame FiftyOne's metadata and the App show;
  ``exif_transpose=False`` keeps the reference's raw frame.
- High-bit-depth modes (16-bit integer, 32-bit integer, float) are scaled by
  their real range; PIL's own ``convert("RGB")`` clips them at 255, which
  turns a 16-bit photo almost white.
- Optionally (``draft_short_side``), JPEGs are decoded at a reduced size with
  libjpeg's DCT scaling. This is not the reference's full decode: see
  :func:`decode_image`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

# Modes whose values do not fit 0..255; "I;16*" are 16-bit unsigned.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
HIGH_BIT_MODES = SIXTEEN_BIT_MODES + ("I", "F")


@dataclass
class Decoded:
    """A decoded image and the size of its full-resolution frame.

    Attributes:
        image: RGB PIL image (smaller than ``width x height`` after a draft
            decode).
        width, height: the full-resolution size in the oriented frame; crop
            boxes are drawn in it.
    """

    image: Image.Image
    width: int
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """``(image.width / width, image.height / height)``."""
        return self.image.width / self.width, self.image.height / self.height


def open_rgb(source, exif_transpose: bool = True) -> Image.Image:
    """A path, PIL image or HWC uint8 array as an RGB PIL image, full size."""
    return decode_image(source, exif_transpose).image


def decode_image(source, exif_transpose: bool = True, draft_short_side: int | None = None) -> Decoded:
    """Decode ``source`` (path, PIL image or HWC array) to RGB.

    Args:
        source: an image path, a PIL image or a HWC uint8 array.
        exif_transpose: apply the EXIF orientation tag (paths and PIL images).
        draft_short_side: for JPEG files, let libjpeg decode at 1/2, 1/4 or
            1/8 scale as long as the shorter side stays >= this many pixels.
            Its DCT-domain scaling differs from a full decode followed by the
            model's antialiased resize, so predictions can differ slightly
            from the reference preprocessing; it is an explicit choice.

    Returns:
        A :class:`Decoded`.
    """
    if isinstance(source, np.ndarray):
        image = Image.fromarray(source)
        return Decoded(to_rgb(image), image.width, image.height)
    if isinstance(source, Image.Image):
        image = ImageOps.exif_transpose(source) if exif_transpose else source
        return Decoded(to_rgb(image), image.width, image.height)
    with Image.open(source) as handle:
        width, height = handle.size
        if draft_short_side and handle.format == "JPEG":
            factor = draft_short_side / min(width, height)
            if factor < 1:
                handle.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))
        handle.load()
        image = handle
        if exif_transpose:
            if _swaps_axes(handle):
                width, height = height, width
            image = ImageOps.exif_transpose(handle)
        image = to_rgb(image)
        if image is handle:
            image = handle.copy()
    return Decoded(image, width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with high-bit-depth modes mapped by their real range.

    "I;16*" (16-bit unsigned): ``v * 255 / 65535``, the format's full range,
    as image viewers show it. "I" and "F" have no nominal range: their
    minimum..maximum is stretched to 0..255 (a constant image becomes 0).
    """
    if image.mode == "RGB":
        return image
    if image.mode not in HIGH_BIT_MODES:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    if image.mode in SIXTEEN_BIT_MODES:
        low, high = 0.0, 65535.0
    else:
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    span = high - low
    scaled = np.zeros_like(values) if span <= 0 else (values - low) * (255.0 / span)
    gray = np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def boxes_in(decoded: Decoded, boxes):
    """Full-resolution ``(l, t, r, b)`` boxes in the decoded image's pixels.

    Args:
        boxes: Tensor[K, 4] int64 in the ``width x height`` frame.

    Returns:
        The same Tensor when the image is full size, else a rounded
        Tensor[K, 4] int64 in ``decoded.image`` pixels.
    """
    sx, sy = decoded.scale
    if sx == 1.0 and sy == 1.0:
        return boxes
    import torch

    factors = torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    return (boxes.to(torch.float64) * factors).round().to(torch.int64)


# Above this many pixels, exact mode on CPU takes seconds per image: every
# crop is resized from full resolution.
LARGE_IMAGE_PIXELS = 16_000_000
_warned = False


def warn_if_slow(source, width: int, height: int, jpeg_draft: bool) -> None:
    """Log once per process when exact mode meets a very large image."""
    global _warned
    if _warned or jpeg_draft or width * height <= LARGE_IMAGE_PIXELS:
        return
    _warned = True
    logger.warning(
        "%s is %.0f MP: crop_mode='exact' cuts and resizes every crop from the "
        "full-resolution image, which takes seconds per image on a CPU. "
        "crop_mode='fast' (or jpeg_draft=True for JPEGs) is much faster; "
        "both differ slightly from the reference preprocessing",
        source if isinstance(source, str) else type(source).__name__,
        width * height / 1e6,
    )


def _swaps_axes(image: Image.Image) -> bool:
    """Whether the EXIF orientation swaps width and height (5-8)."""
    return image.getexif().get(0x0112) in (5, 6, 7, 8)
