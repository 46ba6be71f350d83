"""How a run's fields show in the App: only the best crop by default, and
the latest run's scores at the top of the sidebar.

A run with crops also writes ``<L>_best_crop``, a single ``fo.Detection``
(a copy of the crop labelled ``"best"`` in ``<L>_crops``, with its own id),
and hides ``<L>_crops`` by default through the dataset's App config
(``dataset.app_config.active_fields``, FiftyOne's sidebar defaults: an
exclusion list). The grid then shows one box per image; every crop is still
one checkbox away in the sidebar and in the modal. The best-crop field is
recorded among the run's fields, so deleting the run deletes it. A field of
that name that BiFTA did not create (its ``info`` lacks the marker) is never
written: the run then goes without a best-crop field.

The per-class scores (``<L>_scores``, an embedded document) get a sidebar
group of their own in FiftyOne's defaults, collapsed below the labels. A run
makes its scores group the App's second group (after the tags), expanded,
and collapses the scores groups of earlier runs
(``dataset.app_config.sidebar_groups``; when unset, FiftyOne's default
groups are written first so that nothing else moves). Deleting a run removes
its scores group once FiftyOne has taken the deleted fields out of it.
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


def promote_scores_group(dataset, fields: dict, earlier: list[str] = ()) -> None:
    """Put the run's scores group second in the sidebar, expanded.

    Args:
        dataset: the run's dataset.
        fields: the run's ``{role: field name}``; nothing happens without a
            ``"scores"`` field (a top-k run has none).
        earlier: scores fields of other BiFTA runs, whose groups are
            collapsed.
    """
    import fiftyone as fo

    name = fields.get("scores")
    field = dataset.get_field(name) if name else None
    if field is None or not hasattr(field, "get_field_schema"):
        return
    paths = [f"{name}.{sub}" for sub in field.get_field_schema()]
    config = dataset.app_config
    groups = list(config.sidebar_groups or fo.DatasetAppConfig.default_sidebar_groups(dataset))
    kept = []
    for group in groups:
        if group.name == name:
            continue
        group.paths = [p for p in group.paths if p != name and not p.startswith(name + ".")]
        if group.name in earlier:
            group.expanded = False
        kept.append(group)
    at = 1 if kept and kept[0].name == "tags" else 0
    kept.insert(at, fo.SidebarGroupDocument(name=name, paths=paths, expanded=True))
    config.sidebar_groups = kept
    dataset.save()


def drop_empty_groups(dataset, names) -> list[str]:
    """Remove the sidebar groups called ``names`` that hold no path any more
    (FiftyOne strips deleted fields from the groups but keeps the groups).

    Returns:
        the names of the removed groups.
    """
    config = dataset.app_config
    groups = config.sidebar_groups
    if not groups:
        return []
    names = set(names)
    gone = [g.name for g in groups if g.name in names and not g.paths]
    if gone:
        config.sidebar_groups = [g for g in groups if g.name not in gone]
        dataset.save()
    return gone


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
