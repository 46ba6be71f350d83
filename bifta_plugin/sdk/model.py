"""A FiftyOne :class:`~fiftyone.core.models.Model` for ``apply_model``.

:class:`BiftaModel` wraps one :class:`~bifta_plugin.engine.pipeline.BiftaClassifier`
and converts its predictions with :mod:`bifta_plugin.sdk.labels`; it holds no
math. Crop boxes are keyed by each sample's ``filepath`` (the model is a
``SamplesMixin``), exactly as in :func:`bifta_plugin.sdk.run.run_bifta`, so both
paths draw the same crops for the same image.

Field names. For a crop method ("wca", "bifta") :meth:`BiftaModel.predict`
returns a dict ``{"label": Classification, "crops": Detections}``. FiftyOne
stores a dict under ``label_field + "_" + key`` when ``label_field`` is a
string, or under ``label_field[key]`` when it is a dict. So pass the mapping
that :meth:`BiftaModel.label_fields` builds to get the fields of the
contract (``L`` and ``L_crops``)::

    model = BiftaModel(classes, descriptions, method="bifta",
                       encoder=EncoderSpec("ViT-B-16", "laion2b_s34b_b88k"))
    dataset.apply_model(model, label_field=model.label_fields("bifta"))
    # -> "bifta" (Classification) and "bifta_crops" (Detections)

(``label_field="bifta"`` would give ``bifta_label`` and ``bifta_crops``.)
For the global methods ("clip", "ensemble", "descriptions"), or with
``crops=False``, ``predict`` returns a single Classification and
``label_fields("bifta")`` is simply ``"bifta"``.

The model writes no per-class fields, errors or runs: use
:func:`~bifta_plugin.sdk.run.run_bifta` for the full contract, provenance,
resuming and evaluation.

Embeddings and prompts. The model implements FiftyOne's
:class:`~fiftyone.core.models.EmbeddingsMixin` and
:class:`~fiftyone.core.models.PromptMixin` with the same open_clip model:
:meth:`BiftaModel.embed_all` encodes only each image's global view (the
view a run embeds first, cut as ``crop_mode="exact"`` cuts it; no crops),
L2-normalised, and :meth:`BiftaModel.embed_prompts` the raw prompt texts,
so text-to-image search works in the same space::

    import fiftyone.brain as fob

    fob.compute_similarity(dataset, model=model, brain_key="bifta_sim")
    view = dataset.sort_by_similarity("a photo of a dog", k=10, brain_key="bifta_sim")

For the App's search box in later sessions, pass a zoo model name instead of
the instance (``zoo/``: ``model="bifta-clip", model_kwargs={...}``).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

import fiftyone.core.models as fom

from . import labels as bl
from ..core import crops as crop_ops
from ..core import defaults
from ..core.classnames import validate_classes
from ..core.config import get_config
from ..engine import decode
from ..engine.pipeline import BiftaClassifier, RuntimeOptions
from .options import EncoderSpec, RunOptions
from .plan import resolve_descriptions


class BiftaModel(
    fom.Model, fom.LogitsMixin, fom.SamplesMixin, fom.EmbeddingsMixin, fom.PromptMixin
):
    """BiFTA/WCA zero-shot classification as a FiftyOne model.

    Args:
        classes: class names.
        descriptions: for the description methods: a file path, a
            ``{class: [sentences]}`` mapping, a list of templates or a
            :class:`~bifta_plugin.descriptions.files.DescriptionSet`.
        method: "clip", "ensemble", "descriptions", "wca" or "bifta".
        encoder: the model (:class:`~.options.EncoderSpec`), as for
            :func:`~bifta_plugin.sdk.run.run_bifta`.
        runtime: ``batch_size``, ``num_workers`` and ``crop_mode`` of a
            :class:`~.options.RunOptions` (images arrive decoded, so
            ``num_workers`` only matters for ``crop_mode`` preparation, and
            None means 0 here). ``skip_existing`` and ``skip_failures`` are
            run options: ``apply_model`` has its own ``skip_failures``.
        descriptions_format: see
            :func:`bifta_plugin.descriptions.files.load_descriptions`.
        crops: return the crops too (default: for the crop methods).
        **config_overrides: :func:`bifta_plugin.core.config.get_config`
            overrides.

    ``store_logits`` (set by ``apply_model(..., store_logits=True)``) keeps
    the logits on the Classification.
    """

    def __init__(
        self,
        classes: Sequence[str],
        descriptions=None,
        *,
        method: str = defaults.METHOD,
        encoder: EncoderSpec = EncoderSpec(),
        runtime: RunOptions = RunOptions(),
        descriptions_format: str = defaults.DESCRIPTIONS_FORMAT,
        crops: bool | None = None,
        **config_overrides,
    ):
        fom.LogitsMixin.__init__(self)
        fom.SamplesMixin.__init__(self)
        config = get_config(method, **config_overrides)
        engine = _engine_options(runtime)
        classes = validate_classes(classes)
        descs = resolve_descriptions(descriptions, classes, config, descriptions_format)
        self.classifier = BiftaClassifier(
            encoder.build(),
            classes,
            descs.descriptions if descs is not None else None,
            config=config,
            runtime=engine,
        )
        self.descriptions = descs
        self.crops = config.uses_crops if crops is None else bool(crops)
        self._preprocess = True
        self._last_embeddings = None

    # ------------------------------------------------------------------
    # FiftyOne model interface
    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        # predict_all takes a list of differently sized images
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool):
        self._preprocess = value

    @property
    def has_logits(self) -> bool:
        return True

    # ------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    @property
    def config(self):
        """The method's :class:`~bifta_plugin.config.BiftaConfig`."""
        return self.classifier.config

    def label_fields(self, label_field: str = defaults.LABEL_FIELD):
        """The ``apply_model`` ``label_field`` that writes the contract's names.

        Returns:
            ``{"label": L, "crops": L_crops}`` when :meth:`predict` returns a
            dict, else ``L``.
        """
        if not self.crops:
            return label_field
        names = bl.field_names(label_field)
        return {"label": names["label"], "crops": names["crops"]}

    def predict(self, arg, sample=None):
        """Classify one HWC uint8 image (see :meth:`predict_all`)."""
        return self.predict_all([arg], samples=None if sample is None else [sample])[0]

    def predict_all(self, args, samples=None) -> list:
        """Classify a batch of images.

        Args:
            args: a list of HWC uint8 arrays (any sizes) or an NHWC array.
            samples: the matching samples; their ``filepath`` keys the crop
                boxes. Without them, a hash of the pixels does.

        Returns:
            One Classification per image, or one ``{"label", "crops"}`` dict
            per image (see the module docstring).

        Raises:
            RuntimeError: an image could not be used (``apply_model``'s
                ``skip_failures`` decides what happens next).
        """
        images = [np.asarray(a) for a in args]
        if samples is not None:
            keys = [s.filepath for s in samples]
        else:
            keys = [_pixel_key(a) for a in images]
        outputs = []
        preds = self.classifier.predict(images, keys)
        self._last_embeddings = _stacked_embeddings(preds)
        for pred in preds:
            if not pred.ok:
                raise RuntimeError(f"image {pred.key}: {pred.error}")
            label = bl.to_classification(
                pred, self.classifier.classes, store_logits=self.store_logits
            )
            if self.crops:
                outputs.append({"label": label, "crops": bl.to_detections(pred)})
            else:
                outputs.append(label)
        return outputs


    # ------------------------------------------------------------------
    # FiftyOne embeddings and prompts
    @property
    def has_embeddings(self) -> bool:
        return True

    @property
    def can_embed_prompts(self) -> bool:
        return True

    def get_embeddings(self) -> np.ndarray:
        """The global embeddings of the last :meth:`predict_all` batch:
        float32 [B, D], L2-normalised (the run's ``embeddings_field``)."""
        if self._last_embeddings is None:
            raise ValueError("no embeddings yet: call predict() or predict_all() first")
        return self._last_embeddings

    def embed(self, arg) -> np.ndarray:
        """The global embedding of one image: float32 [D] (see :meth:`embed_all`)."""
        return self.embed_all([arg])[0]

    def embed_all(self, args) -> np.ndarray:
        """Global-view embeddings of images, without crops or scoring.

        Args:
            args: HWC uint8 arrays (any sizes), PIL images, or an NHWC array.

        Returns:
            float32 [N, D], L2-normalised: the global view of each image
            through the model's own preprocessing (the exact crop mode's
            global view), encoded by the same open_clip model.
        """
        clf = self.classifier
        no_crops = torch.zeros(0, 4, dtype=torch.int64)
        pixels = [
            crop_ops.exact_view_pixels(decode.decode_image(a).image, no_crops, clf.plan)
            for a in args
        ]
        if not pixels:
            return np.zeros((0, clf.encoder.embed_dim), dtype=np.float32)
        views = torch.from_numpy(np.concatenate(pixels)).to(clf.device)
        views = crop_ops.normalize_pixels(views, clf.plan.mean, clf.plan.std)
        return clf.encode_views(views).cpu().numpy().astype(np.float32)

    def embed_prompt(self, arg: str) -> np.ndarray:
        """The text embedding of one prompt: float32 [D] (see :meth:`embed_prompts`)."""
        return self.embed_prompts([arg])[0]

    def embed_prompts(self, args) -> np.ndarray:
        """Text embeddings of prompts (used as written, e.g. "a photo of a
        dog"), through the encoder's text cache.

        Returns:
            float32 [N, D], L2-normalised, in the image embeddings' space.
        """
        prompts = [args] if isinstance(args, str) else list(args)
        return self.classifier.encoder.encode_texts(prompts).cpu().numpy().astype(np.float32)


def _stacked_embeddings(preds) -> np.ndarray | None:
    """float32 [B, D] global embeddings of predictions (None when any lacks one)."""
    vectors = [getattr(p, "embedding", None) for p in preds]
    if not vectors or any(v is None for v in vectors):
        return None
    return np.stack([np.asarray(v, dtype=np.float32) for v in vectors])


def _pixel_key(image: np.ndarray) -> str:
    """A stable key for an in-memory image: its shape and pixel hash."""
    digest = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
    return f"sha1:{'x'.join(map(str, image.shape))}:{digest}"


def _engine_options(runtime: RunOptions) -> RuntimeOptions:
    """The pipeline options of a model; refuses the run-only options."""
    if not isinstance(runtime, RunOptions):
        raise ValueError(f"runtime must be a RunOptions; got {type(runtime).__name__}")
    if runtime.skip_existing or not runtime.skip_failures:
        raise ValueError(
            "skip_existing and skip_failures are run_bifta options; a model "
            "has neither (pass skip_failures to apply_model)"
        )
    return RuntimeOptions(
        batch_size=runtime.batch_size,
        num_workers=0 if runtime.num_workers is None else runtime.num_workers,
        crop_mode=runtime.crop_mode,
    )
