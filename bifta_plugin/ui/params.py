"""The ``run_bifta`` parameters: one declarative table for the form and the
execution.

Each :class:`Param` names one :func:`~bifta_plugin.sdk.run.run_bifta`
keyword (the operator's params use the SDK's names) with its type, default,
bounds and help. :mod:`.run_form` declares its inputs from this table and
:func:`.run_execution.build_run_request` reads the params through it, so a
parameter is listed once. Defaults come from :mod:`bifta_plugin.core.defaults`
and the method presets; nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import fiftyone.operators.types as types

from ..core import defaults
from ..core.config import BiftaConfig
from . import _common as ui


def _pretrained(value: str):
    """The form's ``pretrained`` text as the SDK's value (None = random)."""
    return None if str(value).strip().lower() in defaults.RANDOM_PRETRAINED else value


@dataclass(frozen=True)
class Param:
    """One ``run_bifta`` keyword as the form shows it.

    Attributes:
        name: the SDK keyword and the param name.
        kind: ``str``, ``int``, ``float`` or ``bool``.
        default: what the SDK uses when the param is absent (None: the
            SDK's own rule, e.g. the method preset or ``eval_<run key>``).
        label, help: the form's label and description.
        min, max: bounds of a number (the App gets them for floats only: it
            words an integer's ``min=1`` as "greater than 1", so integer
            bounds are checked by the form and the SDK, with their messages).
        choices: the accepted values of a string (a dropdown).
        advanced: shown in the form's "Advanced settings" section.
        parse: the param value -> the SDK value (default: unchanged).
    """

    name: str
    kind: type
    default: Any = None
    label: str = ""
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    advanced: bool = False
    parse: Callable | None = None

    @property
    def is_config(self) -> bool:
        """A method option (:class:`~bifta_plugin.core.config.BiftaConfig`)."""
        return self.name in CONFIG_OPTIONS

    def given(self, params: Mapping) -> bool:
        """Whether ``params`` sets this param (blank = not set)."""
        return params.get(self.name) not in (None, "")

    def value(self, params: Mapping) -> Any:
        """The SDK value of this param in ``params`` (call when :meth:`given`)."""
        value = params[self.name]
        return self.parse(value) if self.parse else value

    def declare(self, inputs: types.Object, **overrides):
        """Declare this param's input on ``inputs``; returns the property."""
        kwargs = dict(label=self.label, description=self.help)
        if self.default is not None:
            kwargs["default"] = self.default
        kwargs.update(overrides)
        if self.choices:
            return ui.radio(
                inputs,
                self.name,
                {c: c for c in self.choices},
                label=kwargs["label"],
                default=kwargs.get("default"),
                description=kwargs["description"],
                dropdown=True,
            )
        if self.kind is int:
            return inputs.int(self.name, **kwargs)
        if self.kind is float:
            return inputs.float(self.name, min=self.min, max=self.max, **kwargs)
        if self.kind is bool:
            return inputs.bool(self.name, **kwargs)
        return inputs.str(self.name, **kwargs)


#: every config option a caller may override (the form shows a few)
CONFIG_OPTIONS = tuple(
    f.name for f in dataclasses.fields(BiftaConfig) if f.name != "method"
)

_PARAMS = (
    Param("label_field", str, defaults.LABEL_FIELD, "Label field",
          "The fo.Classification field to write (plus <field>_crops, "
          "_scores/_topk, _error)"),
    Param("model_name", str, defaults.MODEL_NAME, "Model",
          "An open_clip model name (ViT-B-32, ViT-L-14, hf-hub:org/repo, ...)"),
    Param("pretrained", str, defaults.PRETRAINED, "Pretrained weights",
          "An open_clip tag (openai, laion2b_s34b_b79k, ...) or a checkpoint "
          "path; 'none' = random weights (tests only)", parse=_pretrained),
    Param("device", str, defaults.DEVICE, "Device", "auto, cpu, cuda, cuda:N or mps"),
    Param("batch_size", int, defaults.BATCH_SIZE, "Batch size",
          "Images per step (each image is ~100 crops for bifta/wca)", min=1),
    Param("descriptions_format", str, defaults.DESCRIPTIONS_FORMAT,
          "Descriptions format",
          "auto: a list = templates, an object = CuPL sentences; pick dclip "
          "for short DCLIP descriptors", choices=defaults.DESCRIPTIONS_FORMATS),
    Param("gt_field", str, None, "Ground truth (optional)",
          "Evaluate the predictions against this field"),
    Param("eval_key", str, None, "Evaluation key", "Default: eval_<run key>"),
    Param("overwrite", bool, False, "Overwrite the earlier run"),
    Param("skip_existing", bool, False, "Skip samples that already have a prediction"),
    Param("skip_failures", bool, True, "Record failing images and go on"),
    Param("max_class_fields", int, defaults.MAX_CLASS_FIELDS, "Per-class score fields",
          "Up to this many classes, one score field per class; above, top-k", min=0),
    Param("top_k", int, defaults.TOP_K, "Top-k classes kept", min=1),
    # --- advanced: method options (default: the method's preset) ---
    Param("num_candidates", int, None, "Crops drawn per image", min=1, advanced=True),
    Param("max_views", int, None, "Max crops kept per image", min=1, advanced=True),
    Param("iou_threshold", float, None, "Crop IoU filter threshold (0-1)",
          min=0, max=1, advanced=True),
    Param("desc_sim_threshold", float, None, "Description similarity threshold (0-1)",
          min=0, max=1, advanced=True),
    Param("max_descriptions", int, None, "Max descriptions kept per class",
          min=1, advanced=True),
    Param("seed", int, None, "Seed of the crop boxes", advanced=True),
    # --- advanced: runtime ---
    Param("crop_mode", str, defaults.CROP_MODE, "Crop mode",
          "exact: the reference preprocessing; fast: cut on the device",
          choices=defaults.CROP_MODES, advanced=True),
    Param("precision", str, defaults.PRECISION, "Precision",
          choices=defaults.PRECISIONS, advanced=True),
    Param("num_workers", int, None, "Decode workers",
          "Delegated runs only (immediate runs use 0)", min=0, advanced=True),
    Param("run_key", str, None, "Run key", "Default: the label field", advanced=True),
    Param("patches_field", str, None, "Objects field (optional)",
          "Classify every object of this Detections field instead of the images; "
          "the results become attributes of each object", advanced=True),
    Param("output_patches_field", str, None, "Objects output field",
          "Write into a new Detections field copying the objects (default: into "
          "the objects themselves)", advanced=True),
    Param("patch_padding", float, 0.0, "Object padding",
          "Relative margin added on each side of a box", min=0, max=10, advanced=True),
    Param("patch_min_size", int, defaults.PATCH_MIN_SIZE, "Smallest object side (pixels)", min=1, advanced=True),
    Param("frame_step", int, 1, "Video: every n-th frame",
          "On a video dataset, classify frames 1, 1+n, 1+2n, ...", min=1, advanced=True),
    Param("existing_frames", bool, False, "Video: only the frames in the dataset",
          advanced=True),
    Param("clip_field", str, None, "Video: clip summary field (optional)",
          "A per-video Classification: highest mean probability, majority label",
          advanced=True),
    Param("embeddings_field", str, None, "Embeddings field (optional)",
          "Also store each image's global embedding in this vector field, for "
          "FiftyOne Brain (similarity search, embeddings maps)", advanced=True),
)

#: name -> param, in form order
RUN_PARAMS: Mapping[str, Param] = MappingProxyType({p.name: p for p in _PARAMS})


def sdk_kwargs(params: Mapping) -> dict:
    """The ``run_bifta`` keywords the params give: every table param and
    config option present (blank values dropped), parsed. Config options the
    method does not read are passed on, and refused by the SDK's config."""
    kwargs = {}
    for p in RUN_PARAMS.values():
        if p.given(params):
            kwargs[p.name] = p.value(params)
    for name in CONFIG_OPTIONS:
        if name not in kwargs and params.get(name) not in (None, ""):
            kwargs[name] = params[name]
    return kwargs
