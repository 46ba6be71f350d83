"""How a run's fields show in the App: only the best crop by default.

A run with crops also writes ``<L>_best_crop``, a single ``fo.Detection``
(a copy of the crop labelled ``"best"`` in ``<L>_crops``, with its own id),
and hides ``<L>_crops`` by default through the dataset's App config
(``dataset.app_config.active_fields``, FiftyOne's sidebar defaults: an
exclusion list). The grid then shows one box per image; every crop is still
one checkbox away in the sidebar and in the modal. The best-crop field is
recorded among the run's fields, so deleting the run deletes it. A field of
that name that BiFTA did not create (its ``info`` lacks the marker) is never
written: the run then goes without a best-crop field.
"""

from __future__ import annotations

import logging

from bson import ObjectId

logger = logging.getLogger(__name__)

BEST_CROP_SUFFIX = "_best_crop"
#: ``field.info`` of a best-crop field BiFTA created
MARKER = {"bifta_role": "best_crop"}


def best_crop_field(fields: dict) -> str | None:
    """``<L>_best_crop`` for a run whose ``fields`` include crops, else None."""
    return fields["label"] + BEST_CROP_SUFFIX if "crops" in fields else None


def prepare_display(dataset, fields: dict, params: dict) -> None:
    """Declare the best-crop field, record it in ``params`` and hide the crops.

    Args:
        dataset: the run's dataset.
        fields: the run's ``{role: field name}``.
        params: the run record's parameters (``params["fields"]`` gains
            ``"best_crop"``).
    """
    import fiftyone.core.fields as fof
    import fiftyone.core.labels as fol

    name = best_crop_field(fields)
    if name is None:
        return
    if dataset.get_field(name) is None:
        dataset.add_sample_field(
            name, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detection, info=dict(MARKER)
        )
    elif not _owned(dataset, name):
        logger.warning("field %r exists and is not a BiFTA best-crop field: not written", name)
        return
    for path, ftype in ((f"{name}.best", fof.BooleanField), (f"{name}.description", fof.StringField)):
        if dataset.get_field(path) is None:
            dataset.add_sample_field(path, ftype)
    params["fields"] = dict(params["fields"], best_crop=name)
    hide_by_default(dataset, fields["crops"], show=name)


def hide_by_default(dataset, hidden: str, show: str | None = None) -> None:
    """Make ``hidden`` unchecked (and ``show`` checked) in the App's sidebar."""
    import fiftyone as fo

    config = dataset.app_config
    active = config.active_fields
    if active is None:  # an exclusion list: fields added later stay visible
        active = fo.ActiveFields(exclude=True, paths=[])
    paths = list(active.paths or [])
    if active.exclude:
        paths = sorted(set(paths) | {hidden} - {show})
    else:
        paths = [p for p in paths if p != hidden] + ([show] if show and show not in paths else [])
    active.paths = paths
    config.active_fields = active
    dataset.save()


def write_best_crops(dataset, fields: dict, ids: list, outputs: list) -> None:
    """Write the best crop of each prediction of a batch (one bulk write).

    Args:
        dataset: the run's dataset.
        fields: the run's fields.
        ids: the batch's sample ids.
        outputs: per sample, the stored label dicts keyed by role (the
            ``"crops"`` entry is read).
    """
    best = best_crops(dataset, fields, outputs)
    if best is None:
        return
    name, docs = best
    values = dict(zip(ids, docs))
    dataset.set_values(name, values, key_field="id", expand_schema=False, validate=False)


def best_crops(dataset, fields: dict, outputs: list) -> tuple[str, list] | None:
    """``(best-crop field, stored Detection or None per output)``, or None
    when the run writes no best-crop field (no crops, or a field of that
    name BiFTA did not create)."""
    name = best_crop_field(fields)
    if name is None or not _owned(dataset, name):
        return None
    return name, [_best(out.get("crops")) for out in outputs]


def _owned(dataset, name: str) -> bool:
    import fiftyone.core.labels as fol

    f = dataset.get_field(name)
    return (
        f is not None
        and getattr(f, "document_type", None) is fol.Detection
        and (f.info or {}).get("bifta_role") == MARKER["bifta_role"]
    )


def _best(crops: dict | None) -> dict | None:
    if not crops:
        return None
    for det in crops["detections"]:
        if det.get("best"):
            return dict(det, _id=ObjectId())
    return None
