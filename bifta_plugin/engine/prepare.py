"""What DataLoader workers run: decode an image, draw its crops, cut its views.

:class:`ViewPreparer` is deliberately small and picklable: the crop rule
(method numbers and seed), the model's PIL preprocessing and a few runtime
switches. Workers never receive the classifier or the encoder, so starting
them under ``spawn`` / ``forkserver`` (the macOS and Windows defaults) costs
a few kilobytes, not the model.

Worker outputs are torch tensors in :class:`PreparedView` records; they have
a ``pin_memory`` method, so ``DataLoader(pin_memory=True)`` pins them for
non-blocking copies to CUDA.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..core import boxes as box_ops
from ..core import crops
from ..core.config import BiftaConfig
from . import decode
from . import workers as worker_life
from .regions import Patch, PatchError

# Errors that mean "this image cannot be read"; anything else is a bug and
# propagates.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class PreparedView:
    """What a worker prepares for one entry (an image or an object patch).

    Attributes:
        index: position in the input sequence.
        key: the stable key the crops were drawn from.
        width, height: the classified region's size in pixels (the image,
            or the padded patch).
        origin: ``(x0, y0)`` of the region in the full image's pixels.
        image_width, image_height: the full image's size.
        boxes: Tensor[K, 4] int64 crop boxes in region pixels.
        pixels: exact mode, Tensor[1 + K, S, S, 3] uint8 views (row 0 global).
        source: fast mode, Tensor[h, w, 3] uint8 region, possibly downscaled.
        view_boxes: fast mode, Tensor[1 + K, 4] float64 view boxes in
            ``source`` pixels.
        error: why the entry failed, else None.
    """

    index: int
    key: str
    width: int = 0
    height: int = 0
    origin: tuple = (0, 0)
    image_width: int = 0
    image_height: int = 0
    boxes: Tensor | None = None
    pixels: Tensor | None = None
    source: Tensor | None = None
    view_boxes: Tensor | None = None
    error: str | None = None

    @property
    def num_views(self) -> int:
        return 0 if self.boxes is None else 1 + self.boxes.shape[0]

    def pin_memory(self) -> "PreparedView":
        # Called by DataLoader(pin_memory=True) in its pinning thread.
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        if self.source is not None:
            self.source = self.source.pin_memory()
        return self


@dataclass(frozen=True)
class CropRule:
    """The numbers that draw an image's crop boxes (from the method config)."""

    uses_crops: bool
    num_candidates: int
    max_views: int
    min_scale: float
    max_scale: float
    iou_threshold: float | None
    seed: int

    @classmethod
    def from_config(cls, config: BiftaConfig) -> "CropRule":
        return cls(
            uses_crops=config.uses_crops,
            num_candidates=config.num_candidates,
            max_views=config.max_views,
            min_scale=config.min_scale,
            max_scale=config.max_scale,
            iou_threshold=config.iou_threshold,
            seed=config.seed,
        )

    def boxes(self, width: int, height: int, key: str) -> Tensor:
        """Tensor[K, 4] int64 retained crop boxes (K = 0 for global-only methods)."""
        if not self.uses_crops:
            return torch.zeros(0, 4, dtype=torch.int64)
        return box_ops.select_crop_boxes(
            width,
            height,
            num_candidates=self.num_candidates,
            max_views=self.max_views,
            min_scale=self.min_scale,
            max_scale=self.max_scale,
            iou_threshold=self.iou_threshold,
            seed=self.seed,
            key=key,
        )

    @property
    def min_fraction(self) -> float:
        """The smallest crop side as a fraction of the image's shorter side."""
        return self.min_scale if self.uses_crops else 1.0


@dataclass
class ViewPreparer:
    """Decode -> crop boxes -> views, for one group of entries.

    A group is one image, or several :class:`~.regions.Patch` entries of the
    same image (decoded once for all of them).
    """

    rule: CropRule
    plan: crops.PreprocessPlan
    crop_mode: str
    exif_transpose: bool = True
    jpeg_draft: bool = False
    _warned: bool = field(default=False, repr=False)

    @classmethod
    def like(cls, other) -> "ViewPreparer":
        """A copy of ``other`` (possibly the same class loaded under another
        module name) as this class."""
        if type(other) is cls:
            return other
        rule = other.rule
        if type(rule).__name__ == "CropRule" and not isinstance(rule, CropRule):
            rule = CropRule(**{f: getattr(rule, f) for f in CropRule.__dataclass_fields__})
        plan = other.plan
        if not isinstance(plan, crops.PreprocessPlan):
            plan = crops.PreprocessPlan(
                **{f: getattr(plan, f) for f in crops.PreprocessPlan.__dataclass_fields__}
            )
        return cls(rule, plan, other.crop_mode, other.exif_transpose, other.jpeg_draft)

    def __call__(self, indices: list, sources: list, keys: list) -> list[PreparedView]:
        first = sources[0]
        is_patch = isinstance(first, Patch)
        path = first.path if is_patch else first
        # A draft decode would shrink the image for its own crops; a patch's
        # crops are far smaller, so patches always decode in full.
        draft = None
        if self.jpeg_draft and not is_patch:
            draft = math.ceil(self.plan.size / self.rule.min_fraction)
        try:
            decoded = decode.decode_image(path, self.exif_transpose, draft)
        except IMAGE_ERRORS as e:
            message = f"cannot read image {_name(path)}: {e}"
            return [PreparedView(i, k, error=message) for i, k in zip(indices, keys)]
        if not is_patch:
            return [self._whole(indices[0], keys[0], path, decoded)]
        return [self._patch(i, s, k, decoded) for i, s, k in zip(indices, sources, keys)]

    def _whole(self, index: int, key: str, source, decoded: decode.Decoded) -> PreparedView:
        width, height = decoded.width, decoded.height
        if self.crop_mode == "exact":
            decode.warn_if_slow(source, width, height, self.jpeg_draft)
        return self._views(index, key, decoded, (0, 0), width, height)

    def _patch(self, index: int, patch: Patch, key: str, decoded: decode.Decoded) -> PreparedView:
        full_w, full_h = decoded.width, decoded.height
        try:
            left, top, right, bottom = patch.pixel_box(full_w, full_h)
        except PatchError as e:
            return PreparedView(index, key, error=str(e), image_width=full_w, image_height=full_h)
        region = decode.Decoded(decoded.image.crop((left, top, right, bottom)), right - left, bottom - top)
        return self._views(index, key, region, (left, top), full_w, full_h)

    def _views(self, index, key, decoded: decode.Decoded, origin, full_w, full_h) -> PreparedView:
        width, height = decoded.width, decoded.height
        boxes = self.rule.boxes(width, height, key)
        item = PreparedView(
            index, key, width, height, origin=tuple(origin),
            image_width=full_w, image_height=full_h, boxes=boxes,
        )
        if self.crop_mode == "exact":
            pixels = crops.exact_view_pixels(decoded.image, decode.boxes_in(decoded, boxes), self.plan)
            item.pixels = torch.from_numpy(pixels)
            return item
        source, (sx, sy) = crops.fast_source(decoded.image, self.plan.size, self.rule.min_fraction)
        sx, sy = sx * decoded.scale[0], sy * decoded.scale[1]
        all_boxes = torch.cat(
            [
                torch.tensor([crops.global_view_box(width, height, self.plan.resize_mode)]),
                boxes.to(torch.float64),
            ]
        )
        item.source = torch.from_numpy(np.ascontiguousarray(source))
        item.view_boxes = all_boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        return item


class GroupDataset(torch.utils.data.Dataset):
    """One item per image group: decodes the image once and prepares the
    views of every entry of the group (runs in DataLoader workers)."""

    def __init__(self, groups: list, sources: list, keys: list, preparer: ViewPreparer):
        self.groups = groups
        self.sources = sources
        self.keys = keys
        self.preparer = preparer

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, g):
        members = self.groups[g]
        return self.preparer(
            members, [self.sources[i] for i in members], [self.keys[i] for i in members]
        )


def flatten_groups(groups: list) -> list:
    """The DataLoader's collate: a batch of groups -> one list of entries."""
    return [item for group in groups for item in group]


def worker_init(parent_pid: int, _worker_id: int) -> None:
    """DataLoader ``worker_init_fn``."""
    # A worker must not outlive the process that started it (kill -9 included).
    worker_life.die_with_parent(parent_pid)
    worker_life.cap_heap_growth()
    # Workers only decode and resize with PIL; torch threads there would
    # compete with the encoder for the same cores.
    torch.set_num_threads(1)


def _name(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
