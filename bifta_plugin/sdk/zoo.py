"""The zoo source's entry points: ``download_model`` and ``load_model``.

The repository's ``zoo/`` folder (``manifest.json`` + ``__init__.py``) is a
FiftyOne remote zoo model source; its ``__init__.py`` calls these functions.
The open_clip weights are not part of the source: open_clip fetches (or
finds in its cache) the weights named at load time, so "downloading" the
zoo model only records which package version prepared it.

Load keywords (everything else goes to :class:`~.model.BiftaModel`:
``method``, ``descriptions_format``, ``crops`` and config overrides such as
``num_candidates``)::

    classes, descriptions        the model's classes and descriptions
    clip_model, pretrained       the open_clip model and weights
    device, precision, cache_dir, model_config    as in EncoderSpec
    batch_size, num_workers, crop_mode            as in RunOptions

(``clip_model``, not ``model_name``: FiftyOne passes the zoo model's own
name positionally as ``model_name``.) All of them are plain values, so a
Brain similarity index built with ``model="bifta-open-clip-torch",
model_kwargs={...}`` can reload the model in a later session for the App's
text search.
"""

from __future__ import annotations

import json
import os

from .. import __version__
from ..core import defaults

#: the zoo models of ``zoo/manifest.json``
ZOO_MODELS = ("bifta-open-clip-torch",)

_ENCODER_KEYS = {
    "clip_model": "model_name",
    "pretrained": "pretrained",
    "device": "device",
    "precision": "precision",
    "cache_dir": "cache_dir",
    "model_config": "model_config",
}
_RUNTIME_KEYS = ("batch_size", "num_workers", "crop_mode")


def _check_name(model_name: str) -> None:
    base = str(model_name).split("@")[0]
    if base not in ZOO_MODELS:
        raise ValueError(f"unknown BiFTA zoo model {model_name!r}; known: {list(ZOO_MODELS)}")


def download_model(model_name: str, model_path: str) -> None:
    """Write the small marker file FiftyOne checks to know the model is present.

    Args:
        model_name: the zoo model's name.
        model_path: the file FiftyOne expects (``base_filename`` in the
            source's folder under ``fo.config.model_zoo_dir``).
    """
    _check_name(model_name)
    os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
    with open(model_path, "w") as f:
        json.dump(
            dict(
                model=model_name,
                bifta_plugin_version=__version__,
                weights="fetched by open_clip when the model loads (clip_model=, pretrained=)",
            ),
            f,
            indent=2,
        )


def load_model(model_name: str, model_path: str | None = None, **kwargs):
    """A :class:`~.model.BiftaModel` from the zoo keywords (see the module).

    Raises:
        ValueError: no ``classes``, an unknown model name or a bad keyword.
    """
    from .model import BiftaModel
    from .options import EncoderSpec, RunOptions

    _check_name(model_name)
    classes = kwargs.pop("classes", None)
    if not classes:
        raise ValueError(
            f"{model_name} needs classes=[...] (and descriptions= for the "
            "description methods), e.g. foz.load_zoo_model(name, classes=['cat', "
            "'dog'], descriptions='pets.json')"
        )
    descriptions = kwargs.pop("descriptions", None)
    encoder = {
        field: kwargs.pop(key) for key, field in _ENCODER_KEYS.items() if key in kwargs
    }
    encoder.setdefault("model_name", defaults.MODEL_NAME)
    encoder.setdefault("pretrained", defaults.PRETRAINED)
    if isinstance(encoder["pretrained"], str) and (
        encoder["pretrained"].strip().lower() in defaults.RANDOM_PRETRAINED
    ):
        encoder["pretrained"] = None
    if isinstance(encoder.get("model_config"), list):
        encoder["model_config"] = tuple(encoder["model_config"])
    runtime = {key: kwargs.pop(key) for key in _RUNTIME_KEYS if key in kwargs}
    return BiftaModel(
        classes,
        descriptions,
        encoder=EncoderSpec(**encoder),
        runtime=RunOptions(**runtime),
        **kwargs,
    )
