"""The option groups of a run: which encoder, how to run, where to write.

:func:`~bifta_plugin.sdk.run.run_bifta`, :func:`~bifta_plugin.sdk.run.iter_bifta`,
:class:`~bifta_plugin.sdk.model.BiftaModel` and the ``run_bifta`` operator's
``__call__`` take the same three frozen groups instead of one keyword per
setting::

    run_bifta(
        dataset, ["cat", "dog"], "pets.json",
        encoder=EncoderSpec("ViT-B-16", "laion2b_s34b_b88k"),
        runtime=RunOptions(batch_size=64, skip_existing=True),
        output=OutputSpec("pets", gt_field="ground_truth"),
    )

Every group has defaults, so a call names only the groups it changes.
Flat parameter mappings (the App's form, the CLI's arguments) are grouped
once, at that boundary, by :func:`split_options`.

This module imports nothing heavy: the operators import it at registration.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..core import defaults

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """The CLIP encoder of a run.

    Attributes:
        model_name: an open_clip model name, ``"hf-hub:org/repo"`` or
            ``"local-dir:/path"`` (see
            :func:`~bifta_plugin.engine.encoders.create_encoder`).
        pretrained: an open_clip tag, a checkpoint file, or None/"none" for
            random weights.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        precision: "auto", "fp32", "fp16" or "bf16".
        cache_dir: the text-embedding cache folder; None for the default,
            False to disable it.
        model_config: open_clip model config JSON file(s) to register before
            loading (the model name is the file stem), e.g. a local
            architecture used with ``pretrained="/path/weights.pt"``.
        instance: an already built
            :class:`~bifta_plugin.engine.encoders.ClipEncoder` to reuse; the
            other attributes are then ignored.
    """

    model_name: str = defaults.MODEL_NAME
    pretrained: str | os.PathLike | None = defaults.PRETRAINED
    device: str = defaults.DEVICE
    precision: str = defaults.PRECISION
    cache_dir: str | os.PathLike | bool | None = None
    model_config: str | os.PathLike | tuple | None = None
    instance: Any = None

    def build(self):
        """The encoder: :attr:`instance`, or a new one from open_clip."""
        if self.instance is not None:
            return self.instance
        register_model_configs(self.model_config)
        from ..engine.encoders import create_encoder  # torch, open_clip

        return create_encoder(
            self.model_name,
            self.pretrained,
            device=self.device,
            precision=self.precision,
            cache_dir=self.cache_dir,
        )


@dataclass(frozen=True)
class RunOptions:
    """How a run goes; none of these change its predictions.

    Attributes:
        batch_size: images per pipeline step (and per bulk write).
        num_workers: DataLoader worker processes (None: from the CPU count;
            0 decodes in the calling process).
        crop_mode: "exact", "fast" or "auto" (see
            :class:`~bifta_plugin.engine.pipeline.RuntimeOptions`).
        exif_transpose: apply the images' EXIF orientation (default), so
            crops and boxes are in the frame the App shows; False reads the
            raw frame, as the reference does (see
            :class:`~bifta_plugin.engine.pipeline.RuntimeOptions`).
        jpeg_draft: decode large JPEGs at reduced size (fast; not the
            reference's full decode, so scores move slightly).
        skip_existing: only process samples not done: without ``L_error``
            and missing any of the other fields (resume an interrupted run).
        skip_failures: record a failing image in ``L_error`` and go on;
            False raises :class:`~bifta_plugin.sdk.results.SampleFailedError`
            after writing the batch that holds it.
        shard: ``(index, num_shards)``: process only shard ``index`` of
            the target split into ``num_shards`` (see
            :mod:`~bifta_plugin.sdk.shards`), e.g. one Slurm array task per
            shard; None runs the whole target.
        take_over: take the run's (or shard's) lease even from a live
            process, which stops at its next batch (see
            :mod:`~bifta_plugin.sdk.lease`).
    """

    batch_size: int = defaults.BATCH_SIZE
    num_workers: int | None = None
    crop_mode: str = defaults.CROP_MODE
    exif_transpose: bool = True
    jpeg_draft: bool = False
    skip_existing: bool = False
    skip_failures: bool = True
    shard: tuple | None = None
    take_over: bool = False


@dataclass(frozen=True)
class OutputSpec:
    """Where a run writes.

    Attributes:
        label_field: the prediction field ``L``; the others are
            ``L_<suffix>``.
        run_key: the run key (None: ``label_field``); a valid identifier.
        max_class_fields: write one ``L_scores`` attribute per class up to
            this many classes, else ``L_topk``.
        top_k: classes kept in ``L_topk``.
        gt_field: a Classification field to evaluate against.
        eval_key: the evaluation key (None: ``"eval_" + run_key``); needs
            ``gt_field``.
        embeddings_field: also store each image's L2-normalised global
            embedding (the one the run computes anyway) in this
            ``VectorField``, for FiftyOne Brain's ``compute_similarity(...,
            embeddings=embeddings_field)`` and ``compute_visualization``;
            None stores none.
        clip_field: on a video collection, a sample-level Classification
            summarising each video's frames (mean probability, majority; see
            :mod:`~bifta_plugin.sdk.frames`).
    """

    label_field: str = defaults.LABEL_FIELD
    run_key: str | None = None
    max_class_fields: int = defaults.MAX_CLASS_FIELDS
    top_k: int = defaults.TOP_K
    gt_field: str | None = None
    eval_key: str | None = None
    embeddings_field: str | None = None
    clip_field: str | None = None


@dataclass(frozen=True)
class TargetSpec:
    """What a run classifies: whole images (the default) or objects.

    Attributes:
        patches_field: classify every object of this ``Detections`` field
            instead of the image: the object's box (padded, clamped to the
            image) is the image, BiFTA's crops are drawn inside it, keyed by
            ``(sample id, detection id)``. The results are attributes of each
            object (see :mod:`~bifta_plugin.sdk.patches`). A ``to_patches()``
            view sets it (to the view's field) and limits the run to the
            view's objects.
        output_patches_field: None writes the results into the objects of
            ``patches_field`` (in place; their labels unchanged); a name
            writes them into a new ``Detections`` field that copies the
            objects (each copy's ``label``/``confidence`` is the prediction,
            ``source_id``/``source_label`` the object it copies).
        patch_padding: a relative margin added on each side of a box, as a
            fraction of its width (left, right) and height (top, bottom).
        patch_min_size: the smallest patch side in pixels that is
            classified; a smaller object gets a per-object error and the run
            goes on.
        frame_step: on a video collection, classify frames 1, 1 + step,
            1 + 2 step, ... of each video (see :mod:`~bifta_plugin.sdk.frames`).
        existing_frames: on a video collection, classify only the frames the
            dataset already holds (``frame_step`` is then ignored).
    """

    patches_field: str | None = None
    output_patches_field: str | None = None
    patch_padding: float = 0.0
    patch_min_size: int = defaults.PATCH_MIN_SIZE
    frame_step: int = 1
    existing_frames: bool = False


GROUPS = {
    "encoder": EncoderSpec,
    "runtime": RunOptions,
    "output": OutputSpec,
    "target": TargetSpec,
}


def option_names(group: type) -> tuple[str, ...]:
    """The attribute names of an option group."""
    return tuple(f.name for f in dataclasses.fields(group))


def split_options(flat: Mapping[str, Any]) -> dict:
    """Group a flat parameter mapping (a form's params, CLI arguments).

    Returns:
        ``flat`` with every group attribute (``model_name``, ``batch_size``,
        ``label_field``, ...) moved into ``encoder=EncoderSpec(...)``,
        ``runtime=RunOptions(...)``, ``output=OutputSpec(...)`` and
        ``target=TargetSpec(...)``; the other
        keys (classes, descriptions, method, config overrides) unchanged.
    """
    rest = dict(flat)
    for keyword, group in GROUPS.items():
        values = {n: rest.pop(n) for n in option_names(group) if n in rest}
        rest[keyword] = group(**values)
    return rest


def flatten_options(*groups) -> dict:
    """The attributes of option groups as one flat mapping (the inverse of
    :func:`split_options`, for flat parameter forms)."""
    out = {}
    for group in groups:
        out.update((f.name, getattr(group, f.name)) for f in dataclasses.fields(group))
    return out


def register_model_configs(paths) -> None:
    """``open_clip.add_model_config`` for each config file not yet known.

    Raises:
        ValueError: a path that is not a file.
    """
    if not paths:
        return
    if isinstance(paths, (str, os.PathLike)):
        paths = (paths,)
    import open_clip

    for path in paths:
        path = os.path.expanduser(os.fspath(path))
        if not os.path.isfile(path):
            raise ValueError(f"model_config {path}: no such file")
        name = os.path.splitext(os.path.basename(path))[0]
        if name not in open_clip.list_models():
            open_clip.add_model_config(path)
        logger.info("registered open_clip model config %r", name)
