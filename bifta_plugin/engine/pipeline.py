"""The batched pipeline: images -> views -> embeddings -> scores -> predictions.

One pipeline serves every method. Per batch of images:

1. DataLoader workers decode each image once, draw its crop boxes (from
   ``(seed, image key)`` only, :func:`boxes.select_crop_boxes`) and prepare
   its views (``exact``: uint8 crops through the model's PIL stage;
   ``fast``: the decoded image, cut later on the device);
2. the main process moves the views to the device, normalises them (and in
   ``fast`` mode cuts them with one ``roi_align`` per image), and feeds the
   encoder chunks of ``view_batch_size`` views;
3. scoring runs batched on the device (:mod:`scoring`).

Deviation from the reference (documented in the README): predictions use a
deterministic single pass over all retained crops. The reference's
"20 runs x 60 draws with replacement" evaluation is ``protocol="resample"``:
WCA's draws are shared by every image (they do not depend on the image key),
BiFTA's are per image from its surviving crops; per-image scores are then the
mean over runs, and each run's label is kept for mean/std accuracy.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..core import boxes as box_ops
from ..core import crops, scoring
from ..core.config import BiftaConfig, get_config
from ..core.defaults import CROP_MODES
from ..core.classnames import validate_classes
from ..core.text import TextSide, build_text_side
from . import decode
from . import workers as worker_life

logger = logging.getLogger(__name__)

# Errors that mean "this image cannot be read"; anything else is a bug and
# propagates.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run; none of these change the method's definition.

    Attributes:
        batch_size: images per pipeline step.
        view_batch_size: views per encoder forward pass (None: 1024 on an
            accelerator, 256 on CPU).
        num_workers: DataLoader worker processes (None: chosen from the CPU
            count; 0 decodes in the main process).
        crop_mode: "exact" (reference preprocessing), "fast" (cut on the
            device) or "auto" (fast on an accelerator, exact on CPU; the
            resolved mode is recorded with every run).
        text_batch_size: texts per text-encoder forward pass.
        exif_transpose: apply EXIF orientation when decoding (the frame the
            App and FiftyOne's metadata show); False reads the raw frame, as
            the reference does.
        jpeg_draft: decode JPEGs at a reduced size (libjpeg's 1/2..1/8 DCT
            scaling) as long as the smallest crop keeps the model's input
            size; much faster for large photos but not the reference's full
            decode, so pixels (and rarely predictions) differ slightly.
    """

    batch_size: int = 16
    view_batch_size: int | None = None
    num_workers: int | None = None
    crop_mode: str = "auto"
    text_batch_size: int = 256
    exif_transpose: bool = True
    jpeg_draft: bool = False

    def __post_init__(self):
        for name in ("batch_size", "text_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if self.view_batch_size is not None and (
            not isinstance(self.view_batch_size, int) or self.view_batch_size < 1
        ):
            raise ValueError(
                f"view_batch_size must be an integer >= 1; got {self.view_batch_size!r}"
            )
        if self.num_workers is not None and (
            not isinstance(self.num_workers, int) or self.num_workers < 0
        ):
            raise ValueError(f"num_workers must be an integer >= 0; got {self.num_workers!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(
                f"crop_mode must be one of {list(CROP_MODES)}; got {self.crop_mode!r}"
            )


@dataclass
class ImagePrediction:
    """The result for one image.

    Attributes:
        index: position in the input sequence.
        key: the stable image key the crops were drawn from.
        width, height: original image size in pixels.
        label: predicted class name (None when the image failed).
        label_index: its index in the class list (-1 on failure).
        scores: float32 [C] class scores (cosines for the normalised form).
        logits: float32 [C] ``logit_scale * scores``.
        probs: float32 [C] ``softmax(logits)``.
        confidence: ``probs[label_index]``.
        margin: top-1 minus top-2 probability.
        boxes: int64 [K, 4] retained crops ``(l, t, r, b)`` in pixels.
        crop_weights: float32 [K] visual weights (single pass).
        best_crop: index into ``boxes`` of the crop that contributes most to
            the predicted class (None for global-only methods).
        best_description: the class text that contributes most.
        run_labels: per-run label indices (resample protocol only).
        error: why the image failed, else None.
    """

    index: int
    key: str
    width: int = 0
    height: int = 0
    label: str | None = None
    label_index: int = -1
    scores: np.ndarray | None = None
    logits: np.ndarray | None = None
    probs: np.ndarray | None = None
    confidence: float | None = None
    margin: float | None = None
    boxes: np.ndarray | None = None
    crop_weights: np.ndarray | None = None
    best_crop: int | None = None
    best_description: str | None = None
    run_labels: list | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def relative_boxes(self) -> np.ndarray:
        """Retained crops as FiftyOne's relative ``[x, y, w, h]``, float64 [K, 4]."""
        if self.boxes is None or len(self.boxes) == 0:
            return np.zeros((0, 4))
        return box_ops.boxes_to_relative_xywh(
            torch.from_numpy(self.boxes), self.width, self.height
        ).numpy()


@dataclass
class _Item:
    """What a worker prepares for one image."""

    index: int
    key: str
    width: int = 0
    height: int = 0
    boxes: Tensor | None = None  # [K, 4] int64, original pixels
    pixels: np.ndarray | None = None  # exact: [1 + K, S, S, 3] uint8
    source: np.ndarray | None = None  # fast: [h, w, 3] uint8
    view_boxes: Tensor | None = None  # fast: [1 + K, 4] float in source pixels
    error: str | None = None


def default_key(source, index: int) -> str:
    """A stable key for a source: its path, or its position for in-memory images."""
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source))
    return f"#{index}"


class _ViewDataset(torch.utils.data.Dataset):
    """Decodes images and prepares their views (runs in DataLoader workers)."""

    def __init__(self, sources, keys, prepare: Callable):
        self.sources = sources
        self.keys = keys
        self.prepare = prepare

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, index):
        return self.prepare(index, self.sources[index], self.keys[index])


def _worker_init(parent_pid: int, _worker_id: int):
    # A worker must not outlive its parent (kill -9 included).
    worker_life.die_with_parent(parent_pid)
    # Workers only decode and resize with PIL; torch threads there would
    # compete with the encoder for the same cores.
    torch.set_num_threads(1)


class BiftaClassifier:
    """Zero-shot classifier for one class list, method and encoder.

    Example::

        encoder = create_encoder("ViT-B-32", "openai")
        clf = BiftaClassifier(encoder, ["cat", "dog"], descriptions,
                              config=get_config("bifta"))
        preds = clf.predict(["cat.jpg", "dog.png"])
        preds[0].label, preds[0].confidence

    Args:
        encoder: a :class:`bifta_plugin.encoders.ClipEncoder` (or any object
            with the same attributes).
        classes: class names.
        descriptions: ``{class: [texts]}`` keyed exactly by class name
            (needed by "descriptions", "wca" and "bifta").
        config: method config (default: the "bifta" preset).
        runtime: :class:`RuntimeOptions`.
    """

    def __init__(
        self,
        encoder,
        classes: Sequence[str],
        descriptions: Mapping[str, Sequence[str]] | None = None,
        config: BiftaConfig | None = None,
        runtime: RuntimeOptions | None = None,
    ):
        self.classes = validate_classes(classes)
        self.config = config or get_config()
        self.runtime = runtime or RuntimeOptions()
        self.encoder = encoder
        self.device = torch.device(encoder.device)
        self.crop_mode = resolve_crop_mode(self.runtime.crop_mode, self.device)
        self.plan = crops.split_preprocess(
            encoder.preprocess, encoder.preprocess_cfg.get("resize_mode", "shortest")
        )
        if self.crop_mode == "fast":
            crops.global_view_box(2, 1, self.plan.resize_mode)  # fail early if unsupported
        self.text: TextSide = build_text_side(
            self.config,
            self.classes,
            lambda texts: encoder.encode_texts(texts, batch_size=self.runtime.text_batch_size),
            descriptions,
        ).to(self.device)
        self._class_vectors = self.text.scoring_vectors(self.config.score_form)

    # ------------------------------------------------------------------
    # boxes and views
    def crop_boxes(self, width: int, height: int, key: str) -> Tensor:
        """The retained crop boxes of an image: Tensor[K, 4] int64 pixels."""
        cfg = self.config
        if not cfg.uses_crops:
            return torch.zeros(0, 4, dtype=torch.int64)
        return box_ops.select_crop_boxes(
            width,
            height,
            num_candidates=cfg.num_candidates,
            max_views=cfg.max_views,
            min_scale=cfg.min_scale,
            max_scale=cfg.max_scale,
            iou_threshold=cfg.iou_threshold,
            seed=cfg.seed,
            key=key,
        )

    def _prepare(self, index: int, source, key: str) -> _Item:
        min_fraction = self.config.min_scale if self.config.uses_crops else 1.0
        draft = math.ceil(self.plan.size / min_fraction) if self.runtime.jpeg_draft else None
        try:
            decoded = decode.decode_image(source, self.runtime.exif_transpose, draft)
        except IMAGE_ERRORS as e:
            return _Item(index, key, error=f"cannot read image {_name(source)}: {e}")
        image, width, height = decoded.image, decoded.width, decoded.height
        boxes = self.crop_boxes(width, height, key)
        item = _Item(index, key, width, height, boxes=boxes)
        if self.crop_mode == "exact":
            decode.warn_if_slow(source, width, height, self.runtime.jpeg_draft)
            item.pixels = crops.exact_view_pixels(image, decode.boxes_in(decoded, boxes), self.plan)
        else:
            item.source, (sx, sy) = crops.fast_source(image, self.plan.size, min_fraction)
            sx, sy = sx * decoded.scale[0], sy * decoded.scale[1]
            all_boxes = torch.cat(
                [
                    torch.tensor([crops.global_view_box(width, height, self.plan.resize_mode)]),
                    boxes.to(torch.float64),
                ]
            )
            item.view_boxes = all_boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        return item

    def _item_views(self, item: _Item) -> Tensor:
        """Tensor[1 + K, 3, S, S] normalised views of one image, on the device."""
        if item.pixels is not None:
            pixels = torch.from_numpy(item.pixels).to(self.device)
            return crops.normalize_pixels(pixels, self.plan.mean, self.plan.std)
        source = torch.from_numpy(item.source).to(self.device)
        return crops.fast_views(source, item.view_boxes, self.plan)

    # ------------------------------------------------------------------
    # encoding and scoring
    def view_batch_size(self) -> int:
        if self.runtime.view_batch_size is not None:
            return self.runtime.view_batch_size
        return 256 if self.device.type == "cpu" else 1024

    def encode_views(self, all_views: Tensor) -> Tensor:
        """Encode Tensor[V, 3, S, S] in chunks; returns Tensor[V, D] normalised."""
        step = self.view_batch_size()
        chunks = [
            self.encoder.encode_images(all_views[i : i + step])
            for i in range(0, all_views.shape[0], step)
        ]
        return torch.cat(chunks).float()

    def _score_batch(self, items: list, features: Tensor) -> list[ImagePrediction]:
        counts = [1 + it.boxes.shape[0] for it in items]
        per_item = torch.split(features, counts)
        global_emb = torch.stack([f[0] for f in per_item])  # [B, D]
        if self.config.uses_crops:
            crop_emb, mask = scoring.pad_ragged([f[1:] for f in per_item])  # [B, K, D], [B, K]
            sims = scoring.crop_global_similarity(global_emb, crop_emb)  # [B, K]
            normalize = self.config.score_form == "normalized"
            image_vec, weights = scoring.aggregate_crops(
                crop_emb, sims, mask, self.config.image_log_scale, normalize
            )
            scores = scoring.class_scores(image_vec, self._class_vectors)  # [B, C]
            run_scores = None
            if self.config.protocol == "resample":
                run_scores = self._resample_scores(items, crop_emb, sims, mask)
                scores = run_scores.mean(dim=1)
        else:
            crop_emb = global_emb[:, None]
            mask = torch.ones(len(items), 1, dtype=torch.bool, device=self.device)
            weights = mask.float()
            scores = scoring.class_scores(global_emb, self._class_vectors)
            run_scores = None
        return [
            self._prediction(it, scores[b], crop_emb[b][mask[b]], weights[b][mask[b]],
                             None if run_scores is None else run_scores[b])
            for b, it in enumerate(items)
        ]

    def _resample_scores(self, items, crop_emb, sims, mask) -> Tensor:
        """Scores of the reference protocol: Tensor[B, R, C]."""
        cfg = self.config
        num_valid = mask.sum(dim=1).tolist()
        shared = cfg.spec.shared_resample_draws  # WCA: one index vector for all images
        draws = []
        for it, n in zip(items, num_valid):
            gen = box_ops.image_generator(cfg.seed, "" if shared else it.key, "draws")
            draws.append(
                torch.from_numpy(gen.integers(0, n, size=(cfg.num_runs, cfg.num_draws)))
            )
        indices = torch.stack(draws).to(self.device)  # [B, R, N]
        out = []
        for r in range(cfg.num_runs):
            emb, s = scoring.gather_views(crop_emb, sims, indices[:, r])
            vec, _ = scoring.aggregate_crops(
                emb, s, None, cfg.image_log_scale, cfg.score_form == "normalized"
            )
            out.append(scoring.class_scores(vec, self._class_vectors))
        return torch.stack(out, dim=1)

    def _prediction(self, item, scores, crops, weights, run_scores) -> ImagePrediction:
        logits = self.encoder.logit_scale * scores
        probs = torch.softmax(logits, dim=-1)
        label_index = int(torch.argmax(scores))  # first index on exact ties
        c = label_index
        desc_mask = self.text.desc_mask[c]
        i, j, _ = scoring.best_pair(
            crops, weights, self.text.desc_embeddings[c][desc_mask],
            self.text.desc_weights[c][desc_mask],
        )
        return ImagePrediction(
            index=item.index,
            key=item.key,
            width=item.width,
            height=item.height,
            label=self.classes[c],
            label_index=c,
            scores=scores.cpu().numpy(),
            logits=logits.cpu().numpy(),
            probs=probs.cpu().numpy(),
            confidence=float(probs[c]),
            margin=float(scoring.top2_margin(probs)),
            boxes=item.boxes.numpy(),
            crop_weights=weights.cpu().numpy() if self.config.uses_crops else np.zeros(0, np.float32),
            best_crop=i if self.config.uses_crops else None,
            best_description=self.text.texts[c][j],
            run_labels=None if run_scores is None else run_scores.argmax(dim=-1).tolist(),
        )

    # ------------------------------------------------------------------
    # public entry points
    def iter_predictions(
        self,
        sources: Sequence,
        keys: Sequence[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[list[ImagePrediction]]:
        """Predict batch by batch; yields one list of predictions per batch.

        Args:
            sources: image paths, PIL images or HWC uint8 arrays.
            keys: stable image keys (default: the path, or the position).
            progress: called as ``progress(done, total)`` after each batch.

        Yields:
            Lists of :class:`ImagePrediction` in input order; failed images
            carry ``error`` and no label.
        """
        sources = list(sources)
        keys = [default_key(s, i) for i, s in enumerate(sources)] if keys is None else list(keys)
        if len(keys) != len(sources):
            raise ValueError(f"got {len(keys)} keys for {len(sources)} images")
        loader = self._loader(sources, keys)
        done = 0
        for batch in loader:
            good = [it for it in batch if it.error is None]
            results = {}
            if good:
                features = self.encode_views(torch.cat([self._item_views(it) for it in good]))
                results = {p.index: p for p in self._score_batch(good, features)}
            out = [
                results.get(it.index) or ImagePrediction(index=it.index, key=it.key, error=it.error)
                for it in batch
            ]
            done += len(batch)
            if progress is not None:
                progress(done, len(sources))
            yield out

    def predict(self, sources: Sequence, keys: Sequence[str] | None = None) -> list[ImagePrediction]:
        """Predict a list of images (see :meth:`iter_predictions`)."""
        return [p for batch in self.iter_predictions(sources, keys) for p in batch]

    def _loader(self, sources, keys):
        dataset = _ViewDataset(sources, keys, self._prepare)
        workers = self.runtime.num_workers
        in_memory = any(not isinstance(s, (str, os.PathLike)) for s in sources[:1])
        if workers is None:
            workers = 0 if in_memory or len(sources) <= self.runtime.batch_size else default_num_workers()
        workers = worker_life.safe_num_workers(workers, __name__)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.runtime.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=list,
            worker_init_fn=functools.partial(_worker_init, os.getpid()) if workers > 0 else None,
            prefetch_factor=2 if workers > 0 else None,
            persistent_workers=False,
            # a worker that cannot start (or hangs) raises instead of
            # blocking the run forever
            timeout=worker_life.WORKER_TIMEOUT_S if workers > 0 else 0,
        )

    def describe(self) -> dict:
        """What produced the predictions: config, model and resolved modes."""
        return dict(
            config=self.config.to_dict(),
            classes=list(self.classes),
            model_name=self.encoder.model_name,
            pretrained=self.encoder.pretrained,
            model_identity=self.encoder.identity,
            device=str(self.device),
            precision=self.encoder.precision,
            crop_mode=self.crop_mode,
            logit_scale=float(self.encoder.logit_scale),
            descriptions_kept=self.text.refinement_report(),
        )


def resolve_crop_mode(crop_mode: str, device: torch.device) -> str:
    """"auto" -> "fast" on an accelerator, "exact" on CPU."""
    if crop_mode == "auto":
        return "exact" if device.type == "cpu" else "fast"
    return crop_mode


def default_num_workers() -> int:
    """Decode workers: leave the encoder most of the cores on a CPU box."""
    cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def _name(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
