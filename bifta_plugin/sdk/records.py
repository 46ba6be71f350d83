"""BiFTA runs on a dataset: register, list, inspect, delete.

A run is a FiftyOne custom run (``dataset.register_run``) whose config holds
the full provenance of one :func:`bifta_plugin.api.run_bifta` call. FiftyOne's
``RunConfig.type`` is a read-only property (always ``"run"``), so a BiFTA run
is marked by the config parameter ``run_type="bifta"``; its ``method`` is the
BiFTA method ("clip", "ensemble", "descriptions", "wca", "bifta"). The plain
``RunConfig`` class is used on purpose: a dataset with BiFTA runs loads
anywhere FiftyOne does, with or without this package installed.

Config parameters (see ``docs/ARCHITECTURE.md``):

- ``run_type`` ("bifta"), ``method``, ``label_field``, ``fields`` (role ->
  field name of every field the run writes: ``label``, ``crops``, ``scores``
  or ``topk``, ``error``);
- ``classes``, ``class_fields`` (per-class field names aligned with
  ``classes``, or None when ``topk`` is written), ``max_class_fields``,
  ``top_k``;
- ``model_name``, ``pretrained``, ``model_identity``, ``device``,
  ``precision``, ``crop_mode``, ``logit_scale``, ``runtime``;
- ``descriptions`` (``source``, ``format``, ``sha256``, ``provenance``) or
  None, ``descriptions_kept``;
- ``config`` (the full :class:`~bifta_plugin.config.BiftaConfig`),
  ``package_version``, ``timestamp`` (ISO 8601 UTC, when the run started);
- ``gt_field``, ``eval_key``, ``status`` ("running", "completed", "failed",
  "interrupted") and ``results`` (counts, accuracy, timing).

Example::

    from bifta_plugin.runs import list_bifta_runs, get_bifta_run_info
    for key in list_bifta_runs(dataset):
        info = get_bifta_run_info(dataset, key)
        print(key, info["method"], info["results"].get("accuracy"))
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..core.config import BiftaConfig, config_from_dict

logger = logging.getLogger(__name__)

RUN_TYPE = "bifta"
STATUSES = ("running", "completed", "failed", "interrupted")


# ----------------------------------------------------------------------------
# Queries
# ----------------------------------------------------------------------------
def is_bifta_run(samples, run_key: str) -> bool:
    """Whether ``run_key`` is a registered BiFTA run of the collection."""
    if not samples.has_run(run_key):
        return False
    config = _load_config(samples, run_key)
    return config is not None and getattr(config, "run_type", None) == RUN_TYPE


def list_bifta_runs(samples) -> list[str]:
    """The keys of the collection's BiFTA runs, oldest first (newest last).

    Runs are ordered by their start ``timestamp``, ties by key.
    """
    stamped = []
    for key in samples.list_runs():
        config = _load_config(samples, key)
        if config is None or getattr(config, "run_type", None) != RUN_TYPE:
            continue
        stamped.append((str(getattr(config, "timestamp", "") or ""), key))
    return [key for _, key in sorted(stamped)]


def latest_bifta_run(samples) -> str | None:
    """The key of the most recently started BiFTA run, or None."""
    keys = list_bifta_runs(samples)
    return keys[-1] if keys else None


def get_bifta_run_info(samples, run_key: str) -> dict:
    """Everything recorded about a BiFTA run, as a plain JSON-friendly dict.

    The dict holds the config parameters listed in the module docstring,
    plus ``key``, ``type`` ("bifta"), ``registered_at`` (ISO 8601 UTC, when
    FiftyOne registered it) and ``fiftyone_version``.

    Raises:
        ValueError: ``run_key`` is not a BiFTA run of the collection.
    """
    _require_bifta_run(samples, run_key)
    info = samples.get_run_info(run_key)
    d = _plain(info.config.serialize())
    d.pop("cls", None)
    d["type"] = RUN_TYPE
    d["key"] = run_key
    d["registered_at"] = info.timestamp.isoformat() if info.timestamp else None
    d["fiftyone_version"] = info.version
    d.setdefault("results", {})
    return d


def load_bifta_config(samples, run_key: str) -> BiftaConfig:
    """The :class:`~bifta_plugin.config.BiftaConfig` a BiFTA run used."""
    return config_from_dict(get_bifta_run_info(samples, run_key)["config"])


def bifta_runs_for_field(samples, field_name: str) -> list[str]:
    """Keys of the BiFTA runs that recorded ``field_name`` among their fields."""
    keys = []
    for key in list_bifta_runs(samples):
        fields = getattr(_load_config(samples, key), "fields", None) or {}
        if field_name in fields.values():
            keys.append(key)
    return keys


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------
def register_bifta_run(
    samples, run_key: str, params: dict[str, Any], overwrite: bool = False
) -> None:
    """Register (or replace, with ``overwrite``) a BiFTA run.

    Args:
        samples: the collection the run was applied to.
        run_key: a valid identifier.
        params: JSON-serialisable config parameters (``run_type`` is set
            here; ``method`` should be the BiFTA method).
        overwrite: replace an existing run with the same key.
    """
    params = dict(params, run_type=RUN_TYPE)
    config = samples.init_run(**params)
    samples.register_run(run_key, config, overwrite=overwrite)


def update_bifta_run(samples, run_key: str, **updates) -> None:
    """Update config parameters of a registered BiFTA run (e.g. ``status``)."""
    _require_bifta_run(samples, run_key)
    info = samples.get_run_info(run_key)
    params = _plain(info.config.serialize())
    for name in ("cls", "type"):
        params.pop(name, None)
    params.update(_plain(updates))
    samples.update_run_config(run_key, samples.init_run(**params))


def delete_bifta_run(samples, run_key: str, delete_fields: bool = True) -> list[str]:
    """Delete a BiFTA run, its evaluation and (by default) its fields.

    Only the fields recorded in the run's ``fields`` are deleted, and only
    when no other BiFTA run records them too.

    Args:
        samples: the collection (the dataset's fields are deleted).
        run_key: the run.
        delete_fields: also delete the sample fields the run wrote.

    Returns:
        The names of the deleted fields.

    Raises:
        ValueError: ``run_key`` is not a BiFTA run of the collection.
    """
    info = get_bifta_run_info(samples, run_key)
    eval_key = info.get("eval_key")
    if eval_key and _is_own_evaluation(samples, eval_key, info["label_field"]):
        samples.delete_evaluation(eval_key)
    deleted = []
    if delete_fields:
        dataset = samples._root_dataset
        schema = dataset.get_field_schema()
        for field_name in (info.get("fields") or {}).values():
            others = [k for k in bifta_runs_for_field(dataset, field_name) if k != run_key]
            if field_name in schema and not others:
                dataset.delete_sample_field(field_name)
                deleted.append(field_name)
    samples.delete_run(run_key)
    return deleted


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
def _load_config(samples, run_key: str):
    try:
        return samples.get_run_info(run_key).config
    except Exception:  # an unreadable run of some other tool: not ours
        logger.debug("cannot load run %r", run_key, exc_info=True)
        return None


def _is_own_evaluation(samples, eval_key: str, label_field: str) -> bool:
    """Whether ``eval_key`` is an evaluation of ``label_field``."""
    if not samples.has_evaluation(eval_key):
        return False
    try:
        config = samples.get_evaluation_info(eval_key).config
    except Exception:
        return False
    return getattr(config, "pred_field", None) == label_field


def _require_bifta_run(samples, run_key: str) -> None:
    if not is_bifta_run(samples, run_key):
        runs = list_bifta_runs(samples)
        raise ValueError(
            f"{run_key!r} is not a BiFTA run of this dataset; BiFTA runs: "
            f"{runs or 'none'}"
        )


def _plain(obj):
    """Plain dicts/lists (no OrderedDict/SON), JSON round-trip safe."""
    return json.loads(json.dumps(obj, default=str))
