"""Run leases: which process is running which part of a run, and whether it
is still alive.

A run (or each shard of a sharded run, :mod:`.shards`) is worked on by one
process at a time: that process holds the shard's *lease*, with its owner
(host, pid), when it took it (``since``) and a ``heartbeat`` time renewed
after every batch and by a light background thread (every
:func:`heartbeat_interval` seconds, so a long batch does not look dead). A
lease whose heartbeat is older than :data:`STALE_AFTER` intervals belongs to
a process that died (``kill -9``, a lost machine): it is reported as
**stale** and may be claimed by a new process (at once when the owner was
on this host and its process is gone). A live lease is never
claimed, unless the new run passes ``take_over=True``; the process that
lost it stops at its next batch with :class:`LeaseLostError`.

Where the leases live: one *run state* document per (dataset, run key) in
the ``bifta_run_states`` collection of FiftyOne's database, beside the run
record. Every change is one atomic MongoDB operation guarded by a
compare-and-set (the state's ``generation`` for a reset, the shard's lease
``token`` for a heartbeat or release), so concurrent processes on any
number of machines agree on who holds what without locks. The run record
itself cannot hold them: FiftyOne replaces a run's document when the run is
registered again, which made another process's later write of that run fail
("Failed to update document"), and a document that does not exist yet
cannot be claimed atomically.

A state document::

    {_id: "<dataset id>:<run key>", dataset_id, run_key, generation,
     num_shards, num_completed, finalised_at, created_at, setup,
     shards: [{index, status, owner, token, since, heartbeat, done, total,
               counts, error, op_id}, ...]}

``status`` of a shard: "queued" (waiting for a worker), "running",
"completed", "failed", "interrupted".
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field

COLLECTION = "bifta_run_states"

# A lease is stale once its heartbeat is this many intervals old.
STALE_AFTER = 3

QUEUED, RUNNING, COMPLETED, FAILED, INTERRUPTED = (
    "queued", "running", "completed", "failed", "interrupted"
)


class LeaseHeldError(ValueError):
    """Another live process holds the lease of this run (or shard)."""


class LeaseLostError(RuntimeError):
    """This process's lease was taken over by another process."""


def heartbeat_interval() -> float:
    """Seconds between heartbeats (``BIFTA_LEASE_HEARTBEAT_S``, default 10)."""
    value = float(os.environ.get("BIFTA_LEASE_HEARTBEAT_S", "10"))
    if value <= 0:
        raise ValueError(f"BIFTA_LEASE_HEARTBEAT_S must be > 0; got {value}")
    return value


def utcnow() -> datetime.datetime:
    """Now, as the naive UTC datetime MongoDB returns (milliseconds)."""
    # BSON keeps milliseconds: round here so a value read back compares equal
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def states_collection():
    """The run states collection of FiftyOne's database."""
    import fiftyone.core.odm.database as food

    return food.get_db_conn()[COLLECTION]


def state_id(samples, run_key: str) -> str:
    return f"{samples._root_dataset._doc.id}:{run_key}"


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _stale_cutoff() -> datetime.datetime:
    return utcnow() - datetime.timedelta(seconds=STALE_AFTER * heartbeat_interval())


def _live_condition(cutoff) -> dict:
    """A shard that someone is (or is about to be) working on."""
    return {"$or": [{"status": QUEUED}, {"status": RUNNING, "heartbeat": {"$gte": cutoff}}]}


def _new_shard(index: int, status: str = QUEUED) -> dict:
    return dict(
        index=index, status=status, owner=None, token=None, since=None,
        heartbeat=None, done=0, total=None, counts={}, error=None, op_id=None,
    )


def new_state(dataset, run_key: str, num_shards: int, generation: int) -> dict:
    """A fresh state document: every shard queued."""
    return dict(
        _id=state_id(dataset, run_key),
        dataset_id=str(dataset._root_dataset._doc.id),
        run_key=run_key,
        generation=generation,
        num_shards=num_shards,
        num_completed=0,
        finalised_at=None,
        created_at=utcnow(),
        setup=None,
        shards=[_new_shard(i) for i in range(num_shards)],
    )


def load_state(dataset, run_key: str) -> dict | None:
    return states_collection().find_one({"_id": state_id(dataset, run_key)})


def load_states(dataset) -> dict:
    """``{run_key: state}`` of every run of ``dataset`` (one query)."""
    found = states_collection().find({"dataset_id": str(dataset._root_dataset._doc.id)})
    return {doc["run_key"]: doc for doc in found}


def delete_idle_state(dataset, run_key: str) -> None:
    """Delete the run state unless a shard is queued or live (a run that
    replaces its own key deletes the old run while holding the lease)."""
    cond = {"_id": state_id(dataset, run_key)}
    cond["shards"] = {"$not": {"$elemMatch": _live_condition(_stale_cutoff())}}
    states_collection().delete_one(cond)


def reset_state(dataset, run_key: str, num_shards: int, take_over: bool = False) -> dict:
    """Start the run state over with ``num_shards`` queued shards.

    Raises:
        LeaseHeldError: a shard is queued or held by a live process (and
            not ``take_over``).
    """
    for _ in range(10):
        old = load_state(dataset, run_key)
        if old is not None and not take_over:
            _refuse_if_live(old, run_key)
        doc = _replace_state(dataset, run_key, old, num_shards)
        if doc is not None:
            return doc
    raise RuntimeError(f"could not reset the run state of {run_key!r}: too much contention")


def _replace_state(dataset, run_key, old, num_shards) -> dict | None:
    """Replace the state ``old`` (as read; None: there was none) by a fresh
    one, only if nobody changed it since; the new state or None."""
    from pymongo.errors import DuplicateKeyError

    generation = 1 if old is None else old["generation"] + 1
    doc = new_state(dataset, run_key, num_shards, generation)
    coll = states_collection()
    if old is None:
        try:
            coll.insert_one(doc)
            return doc
        except DuplicateKeyError:
            return None
    cond = {"_id": doc["_id"], "generation": old["generation"]}
    return doc if coll.replace_one(cond, doc).matched_count else None


@dataclass
class Lease:
    """The lease this process holds on one shard of a run."""

    dataset: object
    run_key: str
    index: int
    num_shards: int
    token: str
    generation: int
    lost: bool = False
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def state_id(self) -> str:
        return state_id(self.dataset, self.run_key)

    @property
    def sharded(self) -> bool:
        return self.num_shards > 1

    def _set(self, values: dict, extra: dict | None = None):
        """One compare-and-set update of this shard; the new state or None
        (the lease is not ours any more)."""
        from pymongo import ReturnDocument

        prefix = f"shards.{self.index}."
        update = {"$set": {prefix + k: v for k, v in values.items()}}
        update.update(extra or {})
        return states_collection().find_one_and_update(
            {"_id": self.state_id, prefix + "token": self.token},
            update,
            return_document=ReturnDocument.AFTER,
        )

    def beat(self, done: int | None = None, total: int | None = None) -> None:
        """Renew the heartbeat (and record progress) between batches.

        Raises:
            LeaseLostError: another process took the lease over.
        """
        values = {"heartbeat": utcnow()}
        if done is not None:
            values["done"] = done
        if total is not None:
            values["total"] = total
        if self.lost or self._set(values) is None:
            self.lost = True
            raise LeaseLostError(self.lost_message())

    def lost_message(self) -> str:
        state = load_state(self.dataset, self.run_key)
        holder = ""
        if state is not None and self.index < len(state["shards"]):
            holder = " by " + describe_owner(state["shards"][self.index])
        return (
            f"the lease of run {self.run_key!r}{self._shard_name()} was taken "
            f"over{holder}; this process stops here (its finished batches are kept)"
        )

    def _shard_name(self) -> str:
        return f" shard {self.index}/{self.num_shards}" if self.sharded else ""

    def start_heartbeat(self) -> None:
        """Renew the heartbeat from a daemon thread every interval, so a
        long batch (or model load) never looks stale."""
        interval = heartbeat_interval()

        def loop():
            while not self._stop.wait(interval):
                if self._set({"heartbeat": utcnow()}) is None:
                    self.lost = True
                    return

        self._thread = threading.Thread(target=loop, name="bifta-lease", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def release(self, status: str, counts: dict | None = None, error: str | None = None):
        """End the lease with the shard's final ``status``; returns the new
        state (None when the lease was not ours any more).

        Completing a shard also counts it in ``num_completed``, in the same
        atomic update, so exactly one finisher sees the last count.
        """
        self.stop_heartbeat()
        values = {"status": status, "heartbeat": utcnow(), "error": error}
        if counts is not None:
            values["counts"] = counts
        extra = {"$inc": {"num_completed": 1}} if status == COMPLETED else None
        values["token"] = None
        return self._set(values, extra)


def acquire(dataset, run_key: str, shard=None, take_over: bool = False) -> Lease:
    """Take the lease of ``run_key`` (or of one shard of it).

    Args:
        dataset: the run's dataset.
        run_key: the run key.
        shard: ``(index, num_shards)``, or None for a whole run.
        take_over: claim the lease even from a live process.

    Returns:
        the :class:`Lease`, heartbeat thread started.

    Raises:
        LeaseHeldError: a live process holds it (the message names it).
        ValueError: the shard already completed, or the run is sharded
            another way.
    """
    index, num_shards = shard if shard is not None else (0, 1)
    token = uuid.uuid4().hex
    for _ in range(10):
        state = load_state(dataset, run_key)
        if state is not None and state["num_shards"] != num_shards and not _is_finished(state):
            if not take_over:
                _refuse_if_live(state, run_key)
        elif state is not None and not _is_finished(state):
            lease = _claim(dataset, run_key, state, index, num_shards, token, take_over)
            if lease is not None:
                lease.start_heartbeat()
                return lease
            continue
        # no state, a finished run's, or a dead one of another shape
        _replace_state(dataset, run_key, state, num_shards)
    raise RuntimeError(f"could not take the lease of run {run_key!r}: too much contention")


def _claim(dataset, run_key, state, index, num_shards, token, take_over) -> Lease | None:
    shard = state["shards"][index]
    if shard["status"] == COMPLETED:
        raise ValueError(
            f"shard {index}/{num_shards} of run {run_key!r} is already completed; "
            f"requeue only the unfinished shards (python -m bifta_plugin requeue {run_key})"
        )
    if not take_over and is_live(shard) and shard["status"] == RUNNING:
        raise LeaseHeldError(held_message(run_key, shard, num_shards))
    prefix = f"shards.{index}."
    cond = {"_id": state["_id"], "generation": state["generation"], prefix + "token": shard["token"]}
    now = utcnow()
    values = dict(status=RUNNING, owner=_owner(), token=token, since=now, heartbeat=now, error=None)
    updated = states_collection().update_one(cond, {"$set": {prefix + k: v for k, v in values.items()}})
    if not updated.matched_count:
        return None  # someone else moved first: look again
    return Lease(dataset, run_key, index, num_shards, token, state["generation"])


def _is_finished(state: dict) -> bool:
    """A finished run's state is started over by the next run (all shards
    completed also counts: its finaliser may have died just before)."""
    if state.get("finalised_at") is not None:
        return True
    return all(s["status"] == COMPLETED for s in state["shards"])


def _refuse_if_live(state: dict, run_key: str) -> None:
    live = [s for s in state["shards"] if is_live(s)]
    if live:
        raise LeaseHeldError(held_message(run_key, live[0], state["num_shards"]))


def is_live(shard: dict) -> bool:
    """Queued, or running with a fresh heartbeat (and, when the owner is on
    this host, its process still exists: a killed run on this machine is
    seen at once, without waiting for its heartbeat to age)."""
    if shard["status"] == QUEUED:
        return True
    fresh = shard["status"] == RUNNING and shard["heartbeat"] is not None and (
        shard["heartbeat"] >= _stale_cutoff()
    )
    return fresh and not _owner_gone_here(shard)


def _owner_gone_here(shard: dict) -> bool:
    owner = shard.get("owner") or {}
    if owner.get("host") != socket.gethostname() or not owner.get("pid"):
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def is_stale(shard: dict) -> bool:
    """Running, but its heartbeat stopped (the process died)."""
    return shard["status"] == RUNNING and not is_live(shard)


def describe_owner(shard: dict) -> str:
    owner = shard.get("owner") or {}
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"


def held_message(run_key: str, shard: dict, num_shards: int) -> str:
    where = f" shard {shard['index']}/{num_shards}" if num_shards > 1 else ""
    if shard["status"] == QUEUED:
        return (
            f"run {run_key!r}{where} is queued for a delegated worker; wait for it, or "
            "pass take_over=True (--take-over) to start the run over"
        )
    return (
        f"run {run_key!r}{where} is being run by {describe_owner(shard)} since "
        f"{_iso(shard['since'])} (last heartbeat {_iso(shard['heartbeat'])}); wait for "
        "it to finish, or pass take_over=True (--take-over) to take it over (that "
        "process then stops at its next batch)"
    )


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.replace(tzinfo=datetime.timezone.utc).isoformat(timespec="seconds")


def describe_state(state: dict | None) -> dict | None:
    """The run state as a plain dict for run info: per-shard status and
    progress, lease owner and heartbeat, ``stale`` flags, overall counts."""
    if state is None:
        return None
    shards = []
    for s in state["shards"]:
        shards.append(
            dict(
                index=s["index"],
                status="stale" if is_stale(s) else s["status"],
                owner=s.get("owner"),
                since=_iso(s.get("since")),
                heartbeat=_iso(s.get("heartbeat")),
                done=s.get("done", 0),
                total=s.get("total"),
                counts=s.get("counts") or {},
                error=s.get("error"),
                op_id=s.get("op_id"),
            )
        )
    statuses = [s["status"] for s in shards]
    return dict(
        num_shards=state["num_shards"],
        num_completed=state.get("num_completed", 0),
        finalised_at=_iso(state.get("finalised_at")),
        stale=any(s == "stale" for s in statuses),
        unfinished=[s["index"] for s in shards if s["status"] != COMPLETED],
        done=sum(s["done"] or 0 for s in shards),
        shards=shards,
    )
