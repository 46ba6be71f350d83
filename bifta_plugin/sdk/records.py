"""BiFTA runs on a dataset: register, list, inspect, delete.

A run is a FiftyOne custom run (``dataset.register_run``) whose config holds
the full provenance of one :func:`bifta_plugin.sdk.run.run_bifta` call. FiftyOne's
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
- ``descriptions`` (``source``: the file's absolute path; ``format``;
  ``sha256``: the file's own SHA-256 as ``sha256sum`` prints it, or the
  canonical hash for in-memory descriptions; ``content_sha256``: the
  canonical hash of the descriptions used; ``provenance``) or
  None, ``descriptions_kept``;
- ``config`` (the full :class:`~bifta_plugin.config.BiftaConfig`),
  ``package_version``, ``timestamp`` (ISO 8601 UTC, when the run started);
- ``gt_field``, ``eval_key``, ``status`` ("running", "completed", "failed",
  "interrupted") and ``results`` (counts, accuracy, timing).

Several questions about the runs are answered from one :class:`RunRecords`
snapshot (one read of every record)::

    from bifta_plugin.sdk.records import RunRecords
    records = RunRecords.load(dataset)
    for info in records.infos():
        print(info["key"], info["method"], info["results"].get("accuracy"))
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from typing import Any

from . import lease as bls
from .display import drop_empty_groups
from ..core.config import BiftaConfig, config_from_dict

logger = logging.getLogger(__name__)

RUN_TYPE = "bifta"


# ----------------------------------------------------------------------------
# Snapshot
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunRecords:
    """The BiFTA run records of a collection, read once and queried from
    memory.

    :meth:`load` reads the collection's run list once and each run's record
    once (``list_runs`` + one ``get_run_info`` per run); every query after
    that touches no database. Code that asks several questions about the
    runs (a panel resolving its fields, a pre-run check) loads one snapshot
    and passes it around instead of re-reading the records per question.
    A snapshot does not follow later writes: load a new one after them.

    ``runs`` holds ``(key, info)`` pairs, oldest first (start ``timestamp``,
    ties by key); each ``info`` is the dict :func:`get_bifta_run_info`
    returns. The accessors hand out copies, so the snapshot stays as loaded.
    """

    runs: tuple[tuple[str, dict], ...] = ()

    @classmethod
    def load(cls, samples) -> "RunRecords":
        """Reads the BiFTA run records of ``samples`` (runs of other tools
        and unreadable runs are skipped)."""
        stamped = []
        states = bls.load_states(samples._root_dataset)
        for key in samples.list_runs():
            info = _load_info(samples, key)
            if info is None or not _is_bifta_config(info.config):
                continue
            stamp = str(getattr(info.config, "timestamp", "") or "")
            stamped.append((stamp, key, _info_dict(key, info, states.get(key))))
        stamped.sort(key=lambda item: item[:2])
        return cls(tuple((key, d) for _, key, d in stamped))

    @property
    def keys(self) -> list[str]:
        """The run keys, oldest first."""
        return [key for key, _ in self.runs]

    def __contains__(self, run_key) -> bool:
        return any(key == run_key for key, _ in self.runs)

    def latest(self) -> str | None:
        """The key of the most recently started run, or None."""
        return self.runs[-1][0] if self.runs else None

    def info(self, run_key: str) -> dict:
        """A copy of the run's info dict (:func:`get_bifta_run_info`).

        Raises:
            ValueError: ``run_key`` is not one of the snapshot's runs.
        """
        for key, d in self.runs:
            if key == run_key:
                return copy.deepcopy(d)
        raise _not_a_run(run_key, self.keys)

    def infos(self) -> list[dict]:
        """Copies of all run info dicts, oldest first."""
        return [copy.deepcopy(d) for _, d in self.runs]

    def runs_for_field(self, field_name: str) -> list[str]:
        """Keys of the runs that recorded ``field_name`` among their
        ``fields``, oldest first."""
        return [
            key
            for key, d in self.runs
            if field_name in (d.get("fields") or {}).values()
        ]


# ----------------------------------------------------------------------------
# Queries (one question each; several questions: load a RunRecords)
# ----------------------------------------------------------------------------
def is_bifta_run(samples, run_key: str) -> bool:
    """Whether ``run_key`` is a registered BiFTA run of the collection."""
    if not samples.has_run(run_key):
        return False
    info = _load_info(samples, run_key)
    return info is not None and _is_bifta_config(info.config)


def list_bifta_runs(samples) -> list[str]:
    """The keys of the collection's BiFTA runs, oldest first (newest last).

    Runs are ordered by their start ``timestamp``, ties by key.
    """
    return RunRecords.load(samples).keys


def latest_bifta_run(samples) -> str | None:
    """The key of the most recently started BiFTA run, or None."""
    return RunRecords.load(samples).latest()


def get_bifta_run_info(samples, run_key: str) -> dict:
    """Everything recorded about a BiFTA run, as a plain JSON-friendly dict.

    The dict holds the config parameters listed in the module docstring,
    plus ``key``, ``type`` ("bifta"), ``registered_at`` (ISO 8601 UTC, when
    FiftyOne registered it), ``fiftyone_version``, and from the run's lease
    state (:mod:`.lease`): ``stale`` (a process working on it died: its
    heartbeat stopped), ``lease`` (owner, since, heartbeat, status of a
    whole run) or ``shards`` (per-shard status, owner, progress and counts
    of a sharded run), None for runs recorded without one.

    Raises:
        ValueError: ``run_key`` is not a BiFTA run of the collection.
    """
    info = _load_info(samples, run_key) if samples.has_run(run_key) else None
    if info is None or not _is_bifta_config(info.config):
        raise _not_a_run(run_key, list_bifta_runs(samples))
    return _info_dict(run_key, info, bls.load_state(samples._root_dataset, run_key))


def score_field(samples_or_info, run_key: str | None, class_name: str) -> str:
    """The path of a class's probability under a run's ``L_scores`` field.

    Class names become safe field names (``"t-shirt"`` -> ``t_shirt``), so
    ``F("bifta_scores.t-shirt")`` would match nothing; use
    ``dataset.match(F(score_field(dataset, "bifta", "t-shirt")) > 0.5)``.

    Args:
        samples_or_info: a collection (then ``run_key`` names the run) or
            the dict :func:`get_bifta_run_info` returned (``run_key`` may be None).
        run_key: the run.
        class_name: one of the run's classes, spelled as given to the run.

    Returns:
        e.g. ``"bifta_scores.t_shirt"``.

    Raises:
        ValueError: not a class of the run, or the run wrote ``L_topk``
            (more classes than ``max_class_fields``) instead of scores.
    """
    if isinstance(samples_or_info, dict):
        info = samples_or_info
    else:
        info = get_bifta_run_info(samples_or_info, run_key)
    key = info.get("key", run_key)
    classes, names = info.get("classes") or [], info.get("class_fields")
    scores = (info.get("fields") or {}).get("scores")
    if not names or scores is None:
        raise ValueError(
            f"BiFTA run {key!r} has no per-class score fields "
            f"(it has {len(classes)} classes, above max_class_fields; it wrote top-k "
            "Classifications instead)"
        )
    if class_name not in classes:
        raise ValueError(
            f"{class_name!r} is not a class of BiFTA run {key!r}; classes: "
            f"{classes[:10]}{' ...' if len(classes) > 10 else ''}"
        )
    return f"{scores}.{names[classes.index(class_name)]}"


def load_bifta_config(samples, run_key: str) -> BiftaConfig:
    """The :class:`~bifta_plugin.config.BiftaConfig` a BiFTA run used."""
    return config_from_dict(get_bifta_run_info(samples, run_key)["config"])


def bifta_runs_for_field(samples, field_name: str) -> list[str]:
    """Keys of the BiFTA runs that recorded ``field_name`` among their fields."""
    return RunRecords.load(samples).runs_for_field(field_name)


def runs_signature(samples) -> str:
    """A fingerprint of the dataset's BiFTA runs that changes when a run is
    added, deleted, re-registered or changes status: each run's key, id and
    ``status``, read straight from the database (two small queries, no run
    record loaded, nothing cached by this process), so that a panel can
    poll it cheaply for runs written by other processes.
    """
    import fiftyone.core.odm.database as food

    dataset = samples._root_dataset
    db = food.get_db_conn()
    doc = db.datasets.find_one({"_id": dataset._doc.id}, {"runs": 1}) or {}
    keys = {run_id: key for key, run_id in (doc.get("runs") or {}).items()}
    found = db.runs.find(
        {"_id": {"$in": list(keys)}, "config.run_type": RUN_TYPE},
        {"config.status": 1},
    )
    rows = sorted(
        (keys[d["_id"]], str(d["_id"]), str((d.get("config") or {}).get("status")))
        for d in found
    )
    return json.dumps(rows)


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
    """Update config parameters of a registered BiFTA run (e.g. ``status``).

    One atomic ``$set`` of those parameters on the run's document, found
    through the dataset's current reference (read from the database, not
    from this process's cache): another process re-registering the run, or
    updating other parameters, never makes it fail or lose a write.

    Raises:
        ValueError: ``run_key`` is not a BiFTA run of the collection.
    """
    import fiftyone.core.odm.database as food

    dataset = samples._root_dataset
    db = food.get_db_conn()
    doc = db.datasets.find_one({"_id": dataset._doc.id}, {f"runs.{run_key}": 1}) or {}
    run_id = (doc.get("runs") or {}).get(run_key)
    sets = {f"config.{name}": value for name, value in _plain(updates).items()}
    found = run_id is not None and db.runs.update_one(
        {"_id": run_id, "config.run_type": RUN_TYPE}, {"$set": sets}
    ).matched_count
    if not found:
        raise _not_a_run(run_key, list_bifta_runs(samples))
    cached = dataset._doc.runs.get(run_key)
    if cached is not None and getattr(cached, "id", None) == run_id:
        cached.reload()
    else:
        dataset.reload()


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
        records = RunRecords.load(dataset)
        # nested paths (a patches run's attributes) before their containers
        names = sorted((info.get("fields") or {}).values(), key=lambda n: (-n.count("."), n))
        for field_name in names:
            others = [k for k in records.runs_for_field(field_name) if k != run_key]
            if dataset.get_field(field_name) is not None and not others:
                if field_name.startswith("frames."):
                    dataset.delete_frame_field(field_name[len("frames."):])
                else:
                    dataset.delete_sample_field(field_name)
                deleted.append(field_name)
    samples.delete_run(run_key)
    bls.delete_idle_state(samples._root_dataset, run_key)
    drop_empty_groups(samples._root_dataset, deleted)
    return deleted


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
def _load_info(samples, run_key: str):
    """The run's FiftyOne ``RunInfo``, None when it cannot be read."""
    try:
        return samples.get_run_info(run_key)
    except Exception:  # an unreadable run of some other tool: not ours
        logger.debug("cannot load run %r", run_key, exc_info=True)
        return None


def _is_bifta_config(config) -> bool:
    return getattr(config, "run_type", None) == RUN_TYPE


def _info_dict(run_key: str, info, state: dict | None = None) -> dict:
    """The plain info dict of a BiFTA run (see :func:`get_bifta_run_info`)."""
    d = _plain(info.config.serialize())
    d.pop("cls", None)
    d["type"] = RUN_TYPE
    d["key"] = run_key
    d["registered_at"] = info.timestamp.isoformat() if info.timestamp else None
    d["fiftyone_version"] = info.version
    d.setdefault("results", {})
    described = bls.describe_state(state)
    d["stale"] = bool(described and described["stale"])
    d["lease"] = d["shards"] = None
    if described is not None and described["num_shards"] == 1:
        d["lease"] = described["shards"][0]
    elif described is not None:
        d["shards"] = described
    return d


def _is_own_evaluation(samples, eval_key: str, label_field: str) -> bool:
    """Whether ``eval_key`` is an evaluation of ``label_field``."""
    if not samples.has_evaluation(eval_key):
        return False
    try:
        config = samples.get_evaluation_info(eval_key).config
    except Exception:
        return False
    return getattr(config, "pred_field", None) == label_field


def _not_a_run(run_key: str, runs: list[str]) -> ValueError:
    return ValueError(
        f"{run_key!r} is not a BiFTA run of this dataset; BiFTA runs: "
        f"{runs or 'none'}"
    )


def _plain(obj):
    """Plain dicts/lists (no OrderedDict/SON), JSON round-trip safe."""
    return json.loads(json.dumps(obj, default=str))
