"""Object patches: a region of an image classified as if it were the image.

A :class:`Patch` names an image file and a box in FiftyOne's relative
``[x, y, w, h]`` form (in the EXIF-oriented frame, the one the App draws).
The pipeline decodes the file once for all consecutive patches of the same
path, cuts each patch (with its padding, clamped to the image) and then runs
the method on the patch exactly as on a whole image: the global view is the
patch, BiFTA's crops are drawn inside it from ``(seed, key)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

# Below this many pixels per side a patch holds almost no signal: crops of a
# fraction of it are upsampled from a handful of pixels.
DEFAULT_MIN_SIZE = 8


class PatchError(ValueError):
    """A patch that cannot be classified (tiny, empty or invalid box)."""


@dataclass(frozen=True)
class Patch:
    """One object of an image.

    Attributes:
        path: the image file.
        box: relative ``(x, y, w, h)`` in [0, 1], FiftyOne's bounding box.
        padding: relative margin added on each side, as a fraction of the
            box's width (left/right) and height (top/bottom); the padded box
            is clamped to the image.
        min_size: the smallest patch side, in pixels, that is classified;
            smaller patches get a per-object error and the run goes on.
    """

    path: str
    box: tuple
    padding: float = 0.0
    min_size: int = DEFAULT_MIN_SIZE

    def __post_init__(self):
        if not isinstance(self.path, (str, os.PathLike)):
            raise ValueError(f"Patch.path must be a file path; got {type(self.path).__name__}")
        if not isinstance(self.padding, (int, float)) or not self.padding >= 0:
            raise ValueError(f"padding must be a number >= 0; got {self.padding!r}")
        if not isinstance(self.min_size, int) or self.min_size < 1:
            raise ValueError(f"min_size must be an integer >= 1; got {self.min_size!r}")
        object.__setattr__(self, "box", tuple(self.box) if self.box is not None else None)

    def pixel_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The padded, clamped patch ``(l, t, r, b)`` in pixels of a
        ``width x height`` image.

        Edges are rounded outwards (floor / ceil), so a box never loses a
        pixel it touches.

        Raises:
            PatchError: a malformed box, or a patch below ``min_size``.
        """
        box = self.box
        if box is None or len(box) != 4 or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in box
        ):
            raise PatchError(f"object box {box!r} is not four finite numbers [x, y, w, h]")
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            raise PatchError(f"object box {list(box)} has no area (w={w}, h={h})")
        pad_x, pad_y = self.padding * w, self.padding * h
        left = max(0, _floor((x - pad_x) * width))
        top = max(0, _floor((y - pad_y) * height))
        right = min(width, _ceil((x + w + pad_x) * width))
        bottom = min(height, _ceil((y + h + pad_y) * height))
        if right - left < self.min_size or bottom - top < self.min_size:
            raise PatchError(
                f"object box {[round(v, 4) for v in box]} is {max(0, right - left)} x "
                f"{max(0, bottom - top)} pixels in the {width} x {height} image, "
                f"below min_size={self.min_size}"
            )
        return left, top, right, bottom


# Relative coordinates times the image size land a hair off integers
# (0.55 * 100 = 55.000000000000007); do not round those outwards.
_EPS = 1e-6


def _floor(v: float) -> int:
    return math.floor(v + _EPS)


def _ceil(v: float) -> int:
    return math.ceil(v - _EPS)


def group_by_image(sources) -> list[list[int]]:
    """Positions of ``sources`` grouped so one image is decoded once.

    Consecutive :class:`Patch` entries with the same path form one group;
    every other source is a group of its own.

    Returns:
        A list of non-empty lists of positions, in input order.
    """
    groups: list[list[int]] = []
    last_path = None
    for i, source in enumerate(sources):
        if isinstance(source, Patch):
            path = os.fspath(source.path)
            if groups and path == last_path:
                groups[-1].append(i)
                continue
            last_path = path
        else:
            last_path = None
        groups.append([i])
    return groups


def batch_groups(groups: list[list[int]], batch_size: int) -> list[list[int]]:
    """Group indices packed into batches of about ``batch_size`` entries.

    Groups are never split (one decode per image), so a batch holds at least
    one group and is closed as soon as it reaches ``batch_size`` entries.

    Returns:
        Lists of indices into ``groups``.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    count = 0
    for g, members in enumerate(groups):
        current.append(g)
        count += len(members)
        if count >= batch_size:
            batches.append(current)
            current, count = [], 0
    if current:
        batches.append(current)
    return batches
