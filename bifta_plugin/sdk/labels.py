"""Pure conversion of :class:`~bifta_plugin.pipeline.ImagePrediction` to labels.

The field contract (``docs/ARCHITECTURE.md``), for a label field ``L``:

- ``L``: :class:`fiftyone.core.labels.Classification` with ``label``,
  ``confidence`` (softmax probability of the label), ``logits`` (one float
  per class, in the run's class order), and the attributes ``margin`` (top-1
  minus top-2 probability) and ``score`` (the raw class score); plus
  ``run_labels`` (one label per run) under the resample protocol;
- ``L_crops``: :class:`fiftyone.core.labels.Detections`, one per retained
  crop, relative ``[x, y, w, h]``, ``confidence`` = crop weight, label
  ``"crop"``; the crop contributing most to the predicted class has label
  ``"best"``, ``best=True`` and ``description`` (the others ``best=False``);
- ``L_scores``: an embedded document with one float field per class (the
  class's probability) under the name :func:`safe_field_names` gives it;
- ``L_topk``: :class:`fiftyone.core.labels.Classifications`, the top-k
  classes with their probabilities (instead of ``L_scores`` above the cap);
- ``L_error``: the failure message of the sample, else None;
- the optional embeddings field (any name): the image's L2-normalised
  global embedding, float32 [D], in a ``VectorField``.

Nothing here touches a dataset. Each label is built once, as the BSON-ready
dict FiftyOne stores (``*_doc`` functions); :mod:`bifta_plugin.api` writes
those dicts in bulk (building mongoengine label objects costs about 0.5 ms
per Detection, 50 ms for an image with 100 crops, more than a GPU needs to
encode it), and the ``to_*`` functions turn the same dicts into
:mod:`fiftyone.core.labels` objects (for :mod:`bifta_plugin.model`), so
both paths store identical labels.
"""

from __future__ import annotations

import functools
import io
import re
import unicodedata
import zlib
from typing import Mapping, Sequence

import numpy as np
from bson import ObjectId

import fiftyone.core.labels as fol
from fiftyone.core.odm.embedded_document import DynamicEmbeddedDocument

#: suffix of each derived field, keyed by its role
FIELD_SUFFIXES = {
    "label": "",
    "crops": "_crops",
    "scores": "_scores",
    "topk": "_topk",
    "error": "_error",
}

CROP_LABEL = "crop"
BEST_CROP_LABEL = "best"

_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# Names an embedded document cannot hold as a field (they are its methods or
# aliases of its id); a class slug equal to one of them gets the "c_" prefix.
# A fixed list, so the mapping does not change with the FiftyOne version.
RESERVED_NAMES = frozenset(
    """id pk clean clear_field copy fancy_repr field_names field_to_mongo
    field_to_python from_dict from_json get_field get_text_score has_field
    iter_fields merge my_metaclass set_field to_dict to_json to_mongo
    validate""".split()
)


def field_names(label_field: str) -> dict[str, str]:
    """The names of every field a run with ``label_field`` may write.

    Returns:
        ``{"label": L, "crops": L_crops, "scores": L_scores, "topk": L_topk,
        "error": L_error}``.
    """
    return {role: label_field + suffix for role, suffix in FIELD_SUFFIXES.items()}


def safe_field_names(classes: Sequence[str]) -> dict[str, str]:
    """A valid, unique field name for every class, deterministic.

    Each name is the class name transliterated to ASCII, lower-cased, with
    every run of characters other than ``[a-z0-9]`` replaced by one ``"_"``
    and leading/trailing ``"_"`` stripped; ``"c_"`` is prefixed when the
    result is empty, starts with a digit or is reserved (:data:`RESERVED_NAMES`,
    e.g. ``"id"``, ``"copy"``). Collisions get ``"_2"``,
    ``"_3"``, ... in class order.

    Example::

        >>> safe_field_names(["Golden Retriever", "golden-retriever", "7up"])
        {'Golden Retriever': 'golden_retriever',
         'golden-retriever': 'golden_retriever_2', '7up': 'c_7up'}

    Returns:
        ``{class name: field name}`` in class order.
    """
    names: dict[str, str] = {}
    used: set[str] = set()
    for cls in classes:
        if cls in names:
            continue
        base = _slug(cls)
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        names[cls] = name
    return names


def _slug(name: str) -> str:
    ascii_name = (
        unicodedata.normalize("NFKD", str(name))
        .encode("ascii", "ignore")
        .decode("ascii")
    )
    slug = _NON_ALNUM.sub("_", ascii_name.lower()).strip("_")
    if not slug or slug[0].isdigit() or slug in RESERVED_NAMES:
        slug = "c_" + slug
    return slug


def classification_doc(
    pred,
    classes: Sequence[str],
    *,
    store_logits: bool = True,
) -> dict | None:
    """The ``L`` label of a prediction as a stored dict (None on failure).

    Args:
        pred: an :class:`~bifta_plugin.pipeline.ImagePrediction`.
        classes: the run's classes (``run_labels`` indices are mapped to
            names with them).
        store_logits: keep ``logits``, a plain list of floats in class order.
    """
    if not pred.ok or pred.label is None:
        return None
    c = pred.label_index
    doc = {
        "_id": ObjectId(),
        "_cls": "Classification",
        "tags": [],
        "label": pred.label,
        "confidence": float(pred.confidence),
    }
    if store_logits:
        doc["logits"] = [float(x) for x in pred.logits]
    doc["margin"] = float(pred.margin)
    doc["score"] = float(pred.scores[c])
    if pred.run_labels is not None:
        doc["run_labels"] = [classes[i] for i in pred.run_labels]
    return doc


def detections_doc(pred) -> dict | None:
    """The ``L_crops`` label (the retained crops) as a stored dict."""
    if not pred.ok:
        return None
    boxes = pred.relative_boxes()  # [K, 4]
    weights = pred.crop_weights if pred.crop_weights is not None else ()
    detections = []
    for k, box in enumerate(boxes):
        best = k == pred.best_crop
        det = {
            "_id": ObjectId(),
            "_cls": "Detection",
            "attributes": {},
            "tags": [],
            "label": BEST_CROP_LABEL if best else CROP_LABEL,
            "bounding_box": [float(v) for v in box],
        }
        if k < len(weights):
            det["confidence"] = float(weights[k])
        det["best"] = best
        if best:
            det["description"] = pred.best_description
        detections.append(det)
    return {"_cls": "Detections", "detections": detections}


def scores_doc(pred, class_fields: Mapping[str, str], classes: Sequence[str]) -> dict | None:
    """The ``L_scores`` document: one probability per class field.

    Args:
        pred: the prediction.
        class_fields: ``{class: field name}`` from :func:`safe_field_names`.
        classes: the run's classes, in the order of ``pred.probs``.
    """
    if not pred.ok:
        return None
    doc = {"_cls": "DynamicEmbeddedDocument"}
    for i, c in enumerate(classes):
        doc[class_fields[c]] = float(pred.probs[i])
    return doc


def topk_doc(pred, classes: Sequence[str], k: int) -> dict | None:
    """The ``L_topk`` label: the ``k`` most probable classes, best first."""
    if not pred.ok:
        return None
    probs = np.asarray(pred.probs)
    order = np.argsort(-probs, kind="stable")[: max(int(k), 1)]
    return {
        "_cls": "Classifications",
        "classifications": [
            {
                "_id": ObjectId(),
                "_cls": "Classification",
                "tags": [],
                "label": classes[i],
                "confidence": float(probs[i]),
            }
            for i in order
        ],
    }


def embedding_value(pred) -> np.ndarray | None:
    """The prediction's global embedding, float32 [D] (None on failure)."""
    if not pred.ok:
        return None
    embedding = getattr(pred, "embedding", None)
    if embedding is None:
        raise ValueError(f"prediction {pred.key!r} carries no embedding")
    return np.asarray(embedding, dtype=np.float32)


def embedding_bytes(vector: np.ndarray | None) -> bytes | None:
    """A float32 [D] vector in the stored form of a ``VectorField``.

    The same bytes format as ``fiftyone.core.utils.serialize_numpy_array``
    (zlib around an ``.npy`` file), so FiftyOne reads it back, but about ten
    times cheaper per vector: the ``.npy`` header is built once per length
    and zlib stores the floats uncompressed (unit vectors barely compress).
    """
    if vector is None:
        return None
    vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    return zlib.compress(_npy_header(vector.shape[0]) + vector.tobytes(), 0)


@functools.lru_cache(maxsize=16)
def _npy_header(length: int) -> bytes:
    with io.BytesIO() as f:
        np.save(f, np.zeros(length, dtype=np.float32), allow_pickle=False)
        data = f.getvalue()
    return data[: len(data) - 4 * length]


def prediction_to_documents(
    pred,
    classes: Sequence[str],
    *,
    crops: bool = True,
    class_fields: Mapping[str, str] | None = None,
    top_k: int = 5,
    store_logits: bool = True,
    embeddings: bool = False,
) -> dict:
    """Every label of one prediction as stored dicts, keyed by role.

    Args:
        pred: an :class:`~bifta_plugin.pipeline.ImagePrediction`.
        classes: the run's classes.
        crops: include ``"crops"`` (methods that use crops).
        class_fields: per-class field names: include ``"scores"``; None
            includes ``"topk"`` instead.
        top_k: classes kept in ``"topk"``.
        store_logits: keep the logits on ``"label"``.
        embeddings: include ``"embeddings"`` (:func:`embedding_value`).

    Returns:
        ``{"label": ..., ["crops": ...,] "scores" | "topk": ..., "error":
        str | None[, "embeddings": np.ndarray]}`` (see :func:`field_names`);
        label values are None for a failed image.
    """
    out = {"label": classification_doc(pred, classes, store_logits=store_logits)}
    if crops:
        out["crops"] = detections_doc(pred)
    if class_fields is not None:
        out["scores"] = scores_doc(pred, class_fields, classes)
    else:
        out["topk"] = topk_doc(pred, classes, top_k)
    out["error"] = pred.error
    if embeddings:
        out["embeddings"] = embedding_value(pred)
    return out


# ----------------------------------------------------------------------------
# The same labels as FiftyOne objects
# ----------------------------------------------------------------------------
def to_classification(pred, classes: Sequence[str], *, store_logits: bool = True):
    """:func:`classification_doc` as a :class:`fiftyone.core.labels.Classification`."""
    doc = classification_doc(pred, classes, store_logits=store_logits)
    return _from_doc(fol.Classification, doc)


def to_detections(pred):
    """:func:`detections_doc` as :class:`fiftyone.core.labels.Detections`."""
    return _from_doc(fol.Detections, detections_doc(pred))


def to_scores(pred, class_fields: Mapping[str, str], classes: Sequence[str]):
    """:func:`scores_doc` as a ``DynamicEmbeddedDocument``."""
    return _from_doc(DynamicEmbeddedDocument, scores_doc(pred, class_fields, classes))


def to_topk(pred, classes: Sequence[str], k: int):
    """:func:`topk_doc` as :class:`fiftyone.core.labels.Classifications`."""
    return _from_doc(fol.Classifications, topk_doc(pred, classes, k))


def prediction_to_labels(pred, classes: Sequence[str], **kwargs) -> dict:
    """:func:`prediction_to_documents` with FiftyOne objects as values."""
    docs = prediction_to_documents(pred, classes, **kwargs)
    types = {
        "label": fol.Classification,
        "crops": fol.Detections,
        "scores": DynamicEmbeddedDocument,
        "topk": fol.Classifications,
    }
    return {
        role: value if role in ("error", "embeddings") else _from_doc(types[role], value)
        for role, value in docs.items()
    }


def _from_doc(cls, doc):
    return None if doc is None else cls.from_dict(doc)
