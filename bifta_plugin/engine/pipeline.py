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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core import boxes as box_ops
from ..core import crops, scoring
from ..core.config import BiftaConfig, get_config
from ..core.defaults import CROP_MODES
from ..core.classnames import validate_classes
from ..core.text import TextSide, build_text_side
from . import prepare, regions
from . import workers as worker_life
from .prepare import CropRule, PreparedView, ViewPreparer

logger = logging.getLogger(__name__)

START_METHODS = (None, "fork", "spawn", "forkserver")


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
        multiprocessing_context: start method of the decode workers
            ("fork", "spawn", "forkserver"; None: the platform's default).
            Results do not depend on it.
    """

    batch_size: int = 16
    view_batch_size: int | None = None
    num_workers: int | None = None
    crop_mode: str = "auto"
    text_batch_size: int = 256
    exif_transpose: bool = True
    jpeg_draft: bool = False
    multiprocessing_context: str | None = None

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
        if self.multiprocessing_context not in START_METHODS:
            raise ValueError(
                f"multiprocessing_context must be one of {list(START_METHODS)}; "
                f"got {self.multiprocessing_context!r}"
            )
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
        embedding: float32 [D] the normalised embedding of the global view
            (the image, or the patch), which scoring computes anyway.
        origin: ``(x0, y0)`` of the classified region in the full image
            (``(0, 0)`` for whole images; a patch's corner otherwise).
        image_width, image_height: the full image's size (equal to
            ``width``, ``height`` for whole images).
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
    embedding: np.ndarray | None = None
    origin: tuple = (0, 0)
    image_width: int = 0
    image_height: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def relative_boxes(self) -> np.ndarray:
        """Retained crops as FiftyOne's relative ``[x, y, w, h]`` in the
        full image (a patch's crops included), float64 [K, 4]."""
        if self.boxes is None or len(self.boxes) == 0:
            return np.zeros((0, 4))
        boxes = torch.from_numpy(self.boxes)
        full_w, full_h = self.image_width or self.width, self.image_height or self.height
        if tuple(self.origin) != (0, 0):
            x0, y0 = self.origin
            boxes = boxes + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        return box_ops.boxes_to_relative_xywh(boxes, full_w, full_h).numpy()


def default_key(source, index: int) -> str:
    """A stable key for a source: its path, or its position for in-memory images."""
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source))
    return f"#{index}"


def _failed(item: PreparedView) -> ImagePrediction:
    return ImagePrediction(
        index=item.index, key=item.key, error=item.error,
        image_width=item.image_width, image_height=item.image_height,
    )


def worker_side():
    """The worker-side module (:mod:`.prepare`) under a name any process can
    import.

    Loaded through FiftyOne's plugin registry, this package is
    ``fiftyone.plugins.<org>.<name>.bifta_plugin``, a name only the parent
    process can resolve, so workers started with ``spawn``/``forkserver``
    could not unpickle the dataset, preparer, collate and init functions.
    The same module imported as ``bifta_plugin.engine.prepare`` from this
    package's own folder (put first on ``sys.path``, which spawned workers
    inherit) unpickles anywhere.

    Raises:
        RuntimeError: another ``bifta_plugin`` is already imported, so the
            workers would run different code.
    """
    import importlib
    import sys

    from . import prepare

    canonical = "bifta_plugin.engine.prepare"
    if prepare.__name__ == canonical:
        return prepare
    package_dir = Path(__file__).resolve().parents[1]  # .../bifta_plugin
    root = str(package_dir.parent)
    if "bifta_plugin" not in sys.modules and sys.path[:1] != [root]:
        sys.path.insert(0, root)
    module = importlib.import_module(canonical)
    found = Path(module.__file__).resolve().parents[1]
    if found != package_dir:
        raise RuntimeError(
            f"another bifta_plugin is imported (from {found}), not this plugin's "
            f"{package_dir}, so decode workers would run other code; run with "
            "num_workers=0, or use one copy"
        )
    return module


# ----------------------------------------------------------------------------
# The batched tail: per-image outputs as tensor expressions over the batch
# ----------------------------------------------------------------------------


def gather_crops(features: Tensor, starts: Tensor, num_crops: Tensor, device) -> tuple[Tensor, Tensor]:
    """The crop embeddings of every entry, padded, with one gather.

    Args:
        features: Tensor[V, D] every view of the batch, entry after entry,
            each entry's global view first.
        starts: Tensor[B] int64 (host) row of each entry's global view.
        num_crops: Tensor[B] int64 (host) crops per entry, all >= 1.

    Returns:
        (Tensor[B, K, D] zero-padded, Tensor[B, K] bool mask), K = max crops.
    """
    k_max = int(num_crops.max())
    offsets = torch.arange(k_max)
    mask = offsets[None] < num_crops[:, None]  # [B, K]
    rows = torch.where(mask, starts[:, None] + 1 + offsets[None], starts[:, None])
    mask = mask.to(device)
    gathered = features[rows.to(device)]  # [B, K, D]
    return torch.where(mask[..., None], gathered, torch.zeros((), device=device)), mask


def batch_outputs(
    scores: Tensor,
    crop_emb: Tensor,
    crop_weights: Tensor,
    crop_mask: Tensor,
    text: TextSide,
    logit_scale: float,
    run_scores: Tensor | None = None,
) -> dict:
    """Every per-image output of a batch, without leaving the device.

    Args:
        scores: Tensor[B, C] class scores.
        crop_emb: Tensor[B, K, D] crop embeddings (the global view for
            global-only methods, K = 1).
        crop_weights: Tensor[B, K] visual weights (zero on padding).
        crop_mask: Tensor[B, K] bool.
        text: the run's text side (descriptions [C, M, D], mask, weights).
        logit_scale: CLIP's temperature.
        run_scores: Tensor[B, R, C] per-run scores (resample protocol).

    Returns:
        dict of tensors: scores, logits, probs [B, C]; label, confidence,
        margin, best_crop, best_description [B]; weights [B, K];
        run_labels [B, R] or None. ``label`` is the first maximum on exact
        ties (``torch.argmax``); the best (crop, description) pair is the
        first maximum of ``w_i v_j k_i . t_j`` in crop-major order, as
        :func:`scoring.best_pair` does per image.
    """
    logits = logit_scale * scores
    probs = torch.softmax(logits, dim=-1)
    label = torch.argmax(scores, dim=-1)  # [B]
    confidence = probs.gather(1, label[:, None])[:, 0]
    if probs.shape[1] >= 2:
        top = probs.topk(2, dim=-1).values
        margin = top[:, 0] - top[:, 1]
    else:
        margin = torch.zeros_like(confidence)
    desc = text.desc_embeddings[label]  # [B, M, D]
    desc_w = text.desc_weights[label]  # [B, M]
    desc_mask = text.desc_mask[label]  # [B, M]
    sims = torch.bmm(crop_emb.float(), desc.float().transpose(1, 2))  # [B, K, M]
    contrib = crop_weights[:, :, None].float() * desc_w[:, None, :].float() * sims
    valid = crop_mask[:, :, None] & desc_mask[:, None, :]
    contrib = contrib.masked_fill(~valid, float("-inf"))
    flat = contrib.flatten(1).argmax(dim=1)  # first maximum, crop-major
    num_desc = contrib.shape[2]
    return dict(
        scores=scores,
        logits=logits,
        probs=probs,
        label=label,
        confidence=confidence,
        margin=margin,
        best_crop=torch.div(flat, num_desc, rounding_mode="floor"),
        best_description=flat % num_desc,
        weights=crop_weights,
        run_labels=None if run_scores is None else run_scores.argmax(dim=-1),
    )


_ROW_FIELDS = ("label", "confidence", "margin", "best_crop", "best_description")


def pack_outputs(outputs: dict, embedding: Tensor) -> Tensor:
    """One float32 Tensor[B, 3C + K + 5 + D (+ R)] holding every output, so
    the batch crosses to the host in one transfer.

    Integer outputs (indices < 2**24) are exact in float32.
    """
    parts = [outputs["scores"], outputs["logits"], outputs["probs"], outputs["weights"]]
    parts += [outputs[name][:, None] for name in _ROW_FIELDS]
    parts.append(embedding)
    if outputs["run_labels"] is not None:
        parts.append(outputs["run_labels"])
    return torch.cat([p.to(torch.float32) for p in parts], dim=1)


def unpack_outputs(packed: Tensor, num_classes: int, num_crops: int, dim: int, num_runs: int) -> dict:
    """The host-side (numpy) inverse of :func:`pack_outputs`."""
    array = packed.numpy()
    sizes = [num_classes] * 3 + [num_crops] + [1] * len(_ROW_FIELDS) + [dim, num_runs]
    names = ["scores", "logits", "probs", "weights", *_ROW_FIELDS, "embedding", "run_labels"]
    out, start = {}, 0
    for name, size in zip(names, sizes):
        out[name] = array[:, start : start + size]
        start += size
    for name in _ROW_FIELDS:
        out[name] = out[name][:, 0]
    if num_runs == 0:
        out["run_labels"] = None
    return out


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
        # What the decode workers get: small and picklable (never the encoder).
        self.preparer = ViewPreparer(
            CropRule.from_config(self.config),
            self.plan,
            self.crop_mode,
            exif_transpose=self.runtime.exif_transpose,
            jpeg_draft=self.runtime.jpeg_draft,
        )
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
        return self.preparer.rule.boxes(width, height, key)

    def _segment_views(self, item: PreparedView, start: int, stop: int, source_cache: dict) -> Tensor:
        """Tensor[stop - start, 3, S, S] normalised views ``start:stop`` of
        one entry, on the device.

        Only the views of the chunk being encoded are materialised as floats
        (exact mode: a slice of the uint8 views; fast mode: ``roi_align`` on
        those view boxes), so memory is bounded by ``view_batch_size``.
        """
        non_blocking = self.device.type == "cuda"
        if item.pixels is not None:
            pixels = item.pixels[start:stop].to(self.device, non_blocking=non_blocking)
            return crops.normalize_pixels(pixels, self.plan.mean, self.plan.std)
        source = source_cache.get(item.index)
        if source is None:
            source_cache.clear()  # one entry's source on the device at a time
            source = item.source.to(self.device, non_blocking=non_blocking)
            source_cache[item.index] = source
        return crops.fast_views(source, item.view_boxes[start:stop], self.plan)

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

    def _encode_chunk(self, segments: list) -> Tensor:
        views = segments[0] if len(segments) == 1 else torch.cat(segments)
        return self.encoder.encode_images(views).float()

    def _score_batch(self, items: list, features: Tensor) -> list[ImagePrediction]:
        """Score a batch and build its predictions with one host transfer.

        Args:
            items: B prepared entries (no errors).
            features: Tensor[V, D] from :meth:`ChunkedEncoding.finish`.
        """
        counts = torch.tensor([it.num_views for it in items])  # [B], host
        starts = torch.cumsum(counts, 0) - counts
        global_emb = features[starts.to(self.device)]  # [B, D]
        run_scores = None
        if self.config.uses_crops:
            crop_emb, mask = gather_crops(features, starts, counts - 1, self.device)  # [B, K, D], [B, K]
            sims = scoring.crop_global_similarity(global_emb, crop_emb)  # [B, K]
            normalize = self.config.score_form == "normalized"
            image_vec, weights = scoring.aggregate_crops(
                crop_emb, sims, mask, self.config.image_log_scale, normalize
            )
            scores = scoring.class_scores(image_vec, self._class_vectors)  # [B, C]
            if self.config.protocol == "resample":
                run_scores = self._resample_scores(items, crop_emb, sims, mask)
                scores = run_scores.mean(dim=1)
        else:
            crop_emb = global_emb[:, None]
            mask = torch.ones(len(items), 1, dtype=torch.bool, device=self.device)
            weights = mask.float()
            scores = scoring.class_scores(global_emb, self._class_vectors)
        tail = batch_outputs(
            scores, crop_emb, weights, mask, self.text, self.encoder.logit_scale, run_scores
        )
        host = unpack_outputs(pack_outputs(tail, global_emb).cpu(), scores.shape[1], weights.shape[1],
                              global_emb.shape[1], 0 if run_scores is None else run_scores.shape[1])
        return [self._prediction(b, it, host) for b, it in enumerate(items)]

    def _resample_scores(self, items, crop_emb, sims, mask) -> Tensor:
        """Scores of the reference protocol: Tensor[B, R, C]."""
        cfg = self.config
        num_valid = [it.boxes.shape[0] for it in items]  # host-side, no device sync
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

    def _prediction(self, b: int, item: PreparedView, host: dict) -> ImagePrediction:
        c = int(host["label"][b])
        num_crops = item.boxes.shape[0]
        uses_crops = self.config.uses_crops
        return ImagePrediction(
            index=item.index,
            key=item.key,
            width=item.width,
            height=item.height,
            label=self.classes[c],
            label_index=c,
            scores=host["scores"][b].copy(),
            logits=host["logits"][b].copy(),
            probs=host["probs"][b].copy(),
            confidence=float(host["confidence"][b]),
            margin=float(host["margin"][b]),
            boxes=item.boxes.numpy(),
            crop_weights=host["weights"][b, :num_crops].copy() if uses_crops else np.zeros(0, np.float32),
            best_crop=int(host["best_crop"][b]) if uses_crops else None,
            best_description=self.text.texts[c][int(host["best_description"][b])],
            run_labels=None if host["run_labels"] is None else host["run_labels"][b].astype(int).tolist(),
            embedding=host["embedding"][b].copy(),
            origin=tuple(item.origin),
            image_width=item.image_width or item.width,
            image_height=item.image_height or item.height,
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
            sources: image paths, PIL images, HWC uint8 arrays, or
                :class:`~.regions.Patch` objects (consecutive patches of one
                file are decoded once).
            keys: stable keys the crops are drawn from (default: the path,
                or the position).
            progress: called as ``progress(done, total)`` after each batch.

        Yields:
            Lists of :class:`ImagePrediction` in input order; failed entries
            carry ``error`` and no label. A batch holds about ``batch_size``
            entries (all the patches of one image stay in one batch).
        """
        sources = list(sources)
        keys = [default_key(s, i) for i, s in enumerate(sources)] if keys is None else list(keys)
        if len(keys) != len(sources):
            raise ValueError(f"got {len(keys)} keys for {len(sources)} images")
        worker_life.cap_heap_growth()
        groups = regions.group_by_image(sources)
        # The loader hands over one image group at a time; the entries'
        # views are encoded as they arrive and their pixels dropped, so host
        # memory holds the loader's few prefetched groups and one chunk of
        # float views, whatever ``batch_size`` is. A batch only decides
        # which entries are scored (and yielded) together.
        loaded = iter(self._loader(sources, keys, groups))
        done = 0
        for batch in regions.batch_groups(groups, self.runtime.batch_size):
            stream = ChunkedEncoding(self)
            entries = []
            for _ in batch:
                for item in next(loaded):
                    entries.append(item)
                    if item.error is None:
                        stream.add(item)
            good = [it for it in entries if it.error is None]
            results = {}
            if good:
                features = stream.finish()
                results = {p.index: p for p in self._score_batch(good, features)}
            out = [results.get(it.index) or _failed(it) for it in entries]
            done += len(entries)
            if progress is not None:
                progress(done, len(sources))
            yield out

    def predict(self, sources: Sequence, keys: Sequence[str] | None = None) -> list[ImagePrediction]:
        """Predict a list of images (see :meth:`iter_predictions`)."""
        return [p for batch in self.iter_predictions(sources, keys) for p in batch]

    def _loader(self, sources, keys, groups=None):
        """A DataLoader yielding the prepared entries of one image group
        per item, in group order."""
        if groups is None:
            groups = regions.group_by_image(sources)
        workers = self.runtime.num_workers
        in_memory = any(
            not isinstance(s, (str, os.PathLike, regions.Patch)) for s in sources[:1]
        )
        if workers is None:
            # A spawned worker re-imports torch (seconds on macOS/Windows):
            # only worth it for a run of several batches.
            spawned = (self.runtime.multiprocessing_context or worker_life.start_method()) != "fork"
            few = len(groups) <= self.runtime.batch_size * (4 if spawned else 1)
            workers = 0 if in_memory or few else default_num_workers()
        side = prepare if workers == 0 else worker_side()
        workers = worker_life.safe_num_workers(
            workers, side.__name__, self.runtime.multiprocessing_context
        )
        dataset = side.GroupDataset(groups, sources, keys, side.ViewPreparer.like(self.preparer))
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[[g] for g in range(len(groups))],
            num_workers=workers,
            collate_fn=side.flatten_groups,
            pin_memory=self.device.type == "cuda",
            multiprocessing_context=self.runtime.multiprocessing_context if workers > 0 else None,
            worker_init_fn=functools.partial(side.worker_init, os.getpid()) if workers > 0 else None,
            # groups in flight per worker: enough to keep the encoder fed,
            # and a bound on host memory that does not depend on batch_size
            prefetch_factor=PREFETCH_GROUPS if workers > 0 else None,
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
            text_encoding=getattr(self.encoder, "text_path", None),
            logit_scale=float(self.encoder.logit_scale),
            descriptions_kept=self.text.refinement_report(),
        )


#: image groups each DataLoader worker prepares ahead of the encoder
PREFETCH_GROUPS = 4


class ChunkedEncoding:
    """Encodes the views of entries as they arrive, one encoder chunk of
    ``view_batch_size`` views at a time (a chunk may span entries).

    Only the chunk being filled exists as float views; an entry's uint8
    views (exact mode) or source region (fast mode) are released as soon as
    all its views are cut, so memory does not grow with the batch.
    """

    def __init__(self, classifier: "BiftaClassifier"):
        self.classifier = classifier
        self.step = classifier.view_batch_size()
        self.pending: list[Tensor] = []
        self.filled = 0
        self.encoded: list[Tensor] = []
        self.source_cache: dict = {}

    def add(self, item: PreparedView) -> None:
        start = 0
        while start < item.num_views:
            stop = min(item.num_views, start + self.step - self.filled)
            self.pending.append(self.classifier._segment_views(item, start, stop, self.source_cache))
            self.filled += stop - start
            start = stop
            if self.filled == self.step:
                self._flush()
        item.pixels = item.source = None

    def _flush(self) -> None:
        self.encoded.append(self.classifier._encode_chunk(self.pending))
        self.pending, self.filled = [], 0

    def finish(self) -> Tensor:
        """Tensor[V, D] float32 normalised, every view added, in order."""
        if self.pending:
            self._flush()
        self.source_cache.clear()
        if not self.encoded:
            return torch.empty(0, self.classifier.encoder.embed_dim, device=self.classifier.device)
        return self.encoded[0] if len(self.encoded) == 1 else torch.cat(self.encoded)


def resolve_crop_mode(crop_mode: str, device: torch.device) -> str:
    """"auto" -> "fast" on an accelerator, "exact" on CPU."""
    if crop_mode == "auto":
        return "exact" if device.type == "cpu" else "fast"
    return crop_mode


def default_num_workers() -> int:
    """Decode workers: leave the encoder most of the cores on a CPU box."""
    cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))
