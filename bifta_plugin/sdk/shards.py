"""One run split into shards: the split, the one-time setup, finishing
exactly once, and queueing the shards as FiftyOne delegated operations.

A sharded run is one logical run (one run key, one configuration, one set
of fields) whose target samples are split into ``K`` shards: the target's
sample ids sorted, cut into ``K`` contiguous ranges of sizes differing by at
most one (:func:`shard_ids`). Each shard is processed by one process
(``run_bifta(..., runtime=RunOptions(shard=(i, K)))``): a Slurm array task,
a Kubernetes job, or a ``fiftyone delegated launch`` worker that claimed the
shard's queued operation (:func:`queue_sharded_run`). Predictions depend
only on the configuration, the seed and each image, so the sharded result
is the single-process result.

The shards coordinate through the run state (:mod:`.lease`):

- the first shard to start registers the run and declares its fields
  (:func:`setup_once`); the others wait for it, then check that they run
  the same configuration;
- a finished shard records its counts and is counted in ``num_completed``
  in one atomic update; the process whose update brings the count to
  ``K``, and only that one (a compare-and-set on ``finalised_at``),
  finalises the run: evaluation, totals, status "completed"
  (:func:`complete_shard`);
- a shard whose worker died shows as "stale" in the run info, a failed one
  as "failed"; :func:`requeue_unfinished` queues them again with
  ``skip_existing`` (the samples they had written are kept).

FiftyOne Enterprise's distributed execution (``allow_distributed_execution``
on an operator's config, ``num_distributed_tasks`` in the request) is not
used: open-source FiftyOne drops ``num_distributed_tasks``
(``fiftyone/operators/executor.py``), so each shard is its own queued
operation, claimed atomically by exactly one worker (FiftyOne's
``set_running(..., required_state=QUEUED)``).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from bson import ObjectId

from . import lease as bls
from .results import RunResult

logger = logging.getLogger(__name__)

RUN_OPERATOR = "@bifta/bifta/run_bifta"

# How long a shard waits for another shard to register the run.
SETUP_TIMEOUT_S = 600.0


def check_shard(shard) -> tuple[int, int] | None:
    """``shard`` as ``(index, num_shards)``, or None for a whole run.

    Raises:
        ValueError: not a pair of integers with ``0 <= index < num_shards``.
    """
    if shard is None:
        return None
    try:
        index, num_shards = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (index, num_shards); got {shard!r}") from None
    if num_shards < 1 or not 0 <= index < num_shards or list(shard) != [index, num_shards]:
        raise ValueError(
            f"shard must be (index, num_shards) with 0 <= index < num_shards; got {shard!r}"
        )
    return index, num_shards


def shard_ids(ids, index: int, num_shards: int) -> list[str]:
    """The sample ids of shard ``index``: the sorted ids cut into
    ``num_shards`` contiguous ranges whose sizes differ by at most one."""
    ids = sorted(ids)
    n = len(ids)
    return ids[index * n // num_shards:(index + 1) * n // num_shards]


def shard_view(samples, index: int, num_shards: int):
    """The samples of shard ``index`` (a view; maybe empty).

    The shard is a range of ids, so it is a cheap ``$match`` whatever its
    size, and every shard computes the same split from the same target.
    """
    from fiftyone import ViewField as F

    if num_shards == 1:
        return samples
    part = shard_ids(samples.values("id"), index, num_shards)
    if not part:
        return samples.limit(0)
    return samples.match((F("_id") >= ObjectId(part[0])) & (F("_id") <= ObjectId(part[-1])))


# ----------------------------------------------------------------------------
# setup and finishing
# ----------------------------------------------------------------------------
def setup_once(lease: bls.Lease, prepare) -> bool:
    """Run ``prepare()`` (register the run, declare the fields) in exactly
    one shard; the others wait until it is done.

    Returns:
        whether this process ran it.

    Raises:
        RuntimeError: the setup did not finish within :data:`SETUP_TIMEOUT_S`.
    """
    coll = bls.states_collection()
    claimed = coll.update_one(
        {"_id": lease.state_id, "generation": lease.generation, "setup": None},
        {"$set": {"setup": {"by": lease.index, "done": False}}},
    )
    if claimed.modified_count:
        try:
            prepare()
        except BaseException:
            coll.update_one({"_id": lease.state_id}, {"$set": {"setup": None}})
            raise
        coll.update_one({"_id": lease.state_id}, {"$set": {"setup.done": True}})
        return True
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while time.monotonic() < deadline:
        state = coll.find_one({"_id": lease.state_id}, {"setup": 1})
        setup = (state or {}).get("setup")
        if setup is None:  # the shard setting it up failed: take it on
            return setup_once(lease, prepare)
        if setup.get("done"):
            return False
        lease.beat()
        time.sleep(0.2)
    raise RuntimeError(
        f"run {lease.run_key!r}: shard {setup.get('by')} did not finish registering the run "
        f"within {SETUP_TIMEOUT_S:.0f} s"
    )


def counts_of(result: RunResult) -> dict:
    return dict(
        num_samples=result.num_samples,
        num_processed=result.num_processed,
        num_skipped=result.num_skipped,
        num_failed=result.num_failed,
    )


def complete_shard(lease: bls.Lease, result: RunResult) -> dict | None:
    """Record the shard as completed; returns the run state when this
    process must finalise the run (it completed the last shard and won the
    compare-and-set on ``finalised_at``), else None.

    Raises:
        LeaseLostError: the lease was taken over before the shard finished.
    """
    from pymongo import ReturnDocument

    state = lease.release(bls.COMPLETED, counts=counts_of(result))
    if state is None:
        raise bls.LeaseLostError(lease.lost_message())
    if state["num_completed"] < state["num_shards"]:
        return None
    return bls.states_collection().find_one_and_update(
        {"_id": lease.state_id, "generation": lease.generation, "finalised_at": None,
         "num_completed": {"$gte": state["num_shards"]}},
        {"$set": {"finalised_at": bls.utcnow()}},
        return_document=ReturnDocument.AFTER,
    )


def merged_result(result: RunResult, state: dict, num_samples: int) -> RunResult:
    """The whole run's result from the shards' recorded counts (the
    finalising shard's failures list is the only one kept).

    ``num_samples`` (the run's samples) is used only if a shard recorded no
    count of its own; otherwise the total is the shards' sum, which counts
    the run's unit: samples, objects (patches runs) or frames (video runs).
    """
    counts = [shard.get("counts") or {} for shard in state["shards"]]
    totals = {
        k: sum(int(c.get(k, 0)) for c in counts) for k in ("num_processed", "num_skipped", "num_failed")
    }
    if all("num_samples" in c for c in counts):
        num_samples = sum(int(c["num_samples"]) for c in counts)
    elapsed = (bls.utcnow() - state["created_at"]).total_seconds()
    done = totals["num_processed"] + totals["num_failed"]
    return dataclasses.replace(
        result,
        num_samples=num_samples,
        elapsed_s=elapsed,
        images_per_s=done / elapsed if elapsed > 0 else 0.0,
        **totals,
    )


# ----------------------------------------------------------------------------
# delegated operations
# ----------------------------------------------------------------------------
def queue_sharded_run(samples, *, num_shards: int, take_over: bool = False,
                      delegation_target=None, **operator_kwargs) -> list[str]:
    """Queue one run as ``num_shards`` delegated operations of the
    ``run_bifta`` operator; ``fiftyone delegated launch`` workers (on any
    machine reaching the same database) run them.

    Args:
        samples: the dataset or view to classify.
        num_shards: how many shards (operations).
        take_over: start over even if the run has queued or live shards.
        delegation_target: an optional orchestrator.
        **operator_kwargs: the ``run_bifta`` operator's ``__call__``
            arguments (``classes``, ``descriptions_path``, ``method``,
            ``encoder``, ``runtime``, ``output``, config overrides, ...).

    Returns:
        the queued operations' ids, shard by shard.

    Raises:
        LeaseHeldError: the run has queued or live shards (without
            ``take_over``).
    """
    import fiftyone.operators as foo

    from .options import OutputSpec, RunOptions

    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1; got {num_shards!r}")
    output = operator_kwargs.pop("output", OutputSpec())
    runtime = operator_kwargs.pop("runtime", RunOptions())
    run_key = output.run_key or output.label_field
    dataset = samples._root_dataset
    bls.reset_state(dataset, run_key, num_shards, take_over=take_over)
    op = foo.get_operator(RUN_OPERATOR)
    ids = []
    for index in range(num_shards):
        shard_runtime = dataclasses.replace(runtime, shard=(index, num_shards), take_over=False)
        queued = op(
            samples, output=output, runtime=shard_runtime, delegate=True,
            delegation_target=delegation_target, **operator_kwargs,
        )
        if queued.error:
            raise RuntimeError(f"queueing shard {index}/{num_shards} failed: {queued.error}")
        op_id = str(queued.result["id"])
        _set_op_id(dataset, run_key, index, op_id)
        ids.append(op_id)
    return ids


def queue_shard_operations(dataset, run_key: str, request_params: dict, num_shards: int,
                           operator_uri: str = RUN_OPERATOR, take_over: bool = False,
                           delegation_target=None) -> list[str]:
    """Queue one delegated operation per shard from an operator request
    (the App's form: same dataset, view and params, plus ``shard``).

    Returns:
        the queued operations' ids.

    Raises:
        LeaseHeldError: the run has queued or live shards (without
            ``take_over``).
    """
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    bls.reset_state(dataset, run_key, num_shards, take_over=take_over)
    dos = DelegatedOperationService()
    base = {k: v for k, v in request_params.items() if k != "delegated"}
    params = {k: v for k, v in (base.get("params") or {}).items() if k != "num_shards"}
    ids = []
    for index in range(num_shards):
        shard_params = dict(params, shard=[index, num_shards], take_over=False)
        queued = dos.queue_operation(
            operator=operator_uri,
            label=f"BiFTA {run_key} shard {index}/{num_shards}",
            delegation_target=delegation_target,
            context=ExecutionContext(request_params=dict(base, params=shard_params)),
        )
        _set_op_id(dataset, run_key, index, str(queued.id))
        ids.append(str(queued.id))
    return ids


def _set_op_id(dataset, run_key: str, index: int, op_id: str) -> None:
    bls.states_collection().update_one(
        {"_id": bls.state_id(dataset, run_key)},
        {"$set": {f"shards.{index}.op_id": op_id, f"shards.{index}.status": bls.QUEUED}},
    )


def requeue_unfinished(dataset, run_key: str) -> list[int]:
    """Queue again every shard of a sharded run that is not completed and
    not live (stale, failed, interrupted), resuming with ``skip_existing``;
    a dead worker's FiftyOne operation is marked failed first.

    Returns:
        the requeued shard indices.

    Raises:
        ValueError: no sharded run state for ``run_key``, or a shard without
            a queued operation to copy.
    """
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext, ExecutionResult

    state = bls.load_state(dataset, run_key)
    if state is None or not any(s.get("op_id") for s in state["shards"]):
        raise ValueError(
            f"run {run_key!r} has no shards queued as delegated operations; "
            "rerun it with skip_existing=True instead"
        )
    dos = DelegatedOperationService()
    requeued = []
    for shard in state["shards"]:
        if shard["status"] == bls.COMPLETED or bls.is_live(shard):
            continue
        if not shard.get("op_id"):
            raise ValueError(f"shard {shard['index']} of run {run_key!r} has no operation to copy")
        old = dos.get(ObjectId(shard["op_id"]))
        if old.run_state in ("running", "queued"):
            dos.set_failed(old.id, result=ExecutionResult(
                error=f"shard {shard['index']} lease went stale: its worker died"))
        params = dict(old.context.request_params)
        params["params"] = dict(params.get("params") or {}, skip_existing=True, take_over=False)
        params.pop("delegated", None)
        new = dos.queue_operation(
            operator=old.operator, label=old.label, delegation_target=old.delegation_target,
            context=ExecutionContext(request_params=params),
        )
        _requeued(dataset, run_key, shard, str(new.id))
        requeued.append(shard["index"])
    return requeued


def _requeued(dataset, run_key: str, shard: dict, op_id: str) -> None:
    """Mark the shard queued with its new operation, unless a worker
    claimed it meanwhile (compare-and-set on its lease token)."""
    i = shard["index"]
    bls.states_collection().update_one(
        {"_id": bls.state_id(dataset, run_key), f"shards.{i}.token": shard["token"]},
        {"$set": {f"shards.{i}.op_id": op_id, f"shards.{i}.status": bls.QUEUED,
                  f"shards.{i}.token": None, f"shards.{i}.queued_at": bls.utcnow()}},
    )


def suggested_shards(num_samples: int, per_shard: int = 2000, max_shards: int = 64) -> int:
    """A shard count for a target of ``num_samples``: about ``per_shard``
    samples each, at most ``max_shards``."""
    return max(1, min(max_shards, -(-int(num_samples) // per_shard)))
