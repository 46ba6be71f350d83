"""Writing a run: the run record, the fields, the predictions batch by
batch (one bulk write per batch, a progress event after each), the
evaluation and the final status.

Crash consistency: a run can be killed at any instruction (``kill -9``,
OOM, a lost database) and rerun with ``skip_existing=True``:

- the run is registered *before* its fields are declared, so the fields
  of a killed run are always owned by its record and a rerun reuses them
  without ``overwrite``;
- each sample is written by one ``UpdateOne`` that sets all its fields
  together (MongoDB updates one document atomically), so a sample is
  written whole or not at all;
- :func:`samples_to_do` treats a sample with any of its fields missing as
  not done.

:func:`kill_point` is a test hook that kills the process at a named
write boundary (``BIFTA_TEST_KILL_AT``), so the tests can check the above
with real processes instead of timing luck.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import signal
import time

import numpy as np

import fiftyone.core.fields as fof

from .. import __version__
from . import display as bd
from . import frames as bf
from . import labels as bl
from . import patches as bp
from . import records as br
from ..core.config import BiftaConfig
from ..core.progress import ProgressEvent
from ..engine.pipeline import BiftaClassifier
from .results import MAX_FAILURES_KEPT, DatabaseUnavailableError, RunResult, SampleFailedError
from .plan import ROLE_TYPES, RunPlan
from .rules import done_expression

logger = logging.getLogger(__name__)


def run_params(plan: RunPlan, classifier: BiftaClassifier) -> dict:
    desc = plan.descriptions
    about = classifier.describe()
    runtime, out = plan.engine, plan.output
    return dict(
        method=plan.config.method,
        label_field=plan.label_field,
        fields=dict(plan.fields),
        classes=list(plan.classes),
        num_classes=len(plan.classes),
        class_fields=(
            [plan.class_fields[c] for c in plan.classes] if plan.class_fields else None
        ),
        max_class_fields=out.max_class_fields,
        top_k=out.top_k,
        model_name=about["model_name"],
        pretrained=None if about["pretrained"] is None else str(about["pretrained"]),
        model_identity=about["model_identity"],
        device=about["device"],
        precision=about["precision"],
        crop_mode=about["crop_mode"],
        text_encoding=about["text_encoding"],
        logit_scale=about["logit_scale"],
        runtime=dict(
            batch_size=runtime.batch_size,
            num_workers=runtime.num_workers,
            view_batch_size=runtime.view_batch_size,
            text_batch_size=runtime.text_batch_size,
            exif_transpose=runtime.exif_transpose,
            jpeg_draft=runtime.jpeg_draft,
        ),
        descriptions=(
            None
            if desc is None
            else dict(
                source=str(desc.source),
                format=desc.format,
                # the file's own hash (sha256sum); content_sha256 is the
                # canonical hash of the descriptions used, for any source
                sha256=desc.file_sha256 or desc.sha256,
                content_sha256=desc.sha256,
                provenance=desc.provenance,
                report=desc.report.to_dict(),
            )
        ),
        descriptions_sha256=None if desc is None else desc.sha256,
        descriptions_kept=about["descriptions_kept"],
        config=plan.config.to_dict(),
        gt_field=out.gt_field,
        eval_key=out.eval_key,
        target=dataclasses.asdict(plan.target) if plan.is_patches else None,
        frames=(
            dict(frame_step=plan.target.frame_step, existing_frames=plan.target.existing_frames)
            if plan.is_frames else None
        ),
        package_version=__version__,
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        status="running",
        results={},
    )


def prepare_dataset(plan: RunPlan, params: dict) -> None:
    """Apply the plan's deletions, declare the fields, register the run."""
    dataset, deletions = plan.dataset, plan.require_allowed().deletions
    for key in sorted(deletions.evaluations):
        if dataset.has_evaluation(key):
            dataset.delete_evaluation(key)
    for key in sorted(deletions.runs):
        if br.is_bifta_run(dataset, key):
            br.delete_bifta_run(dataset, key, delete_fields=True)
        elif dataset.has_run(key):
            dataset.delete_run(key)
    for name in sorted(deletions.fields, key=lambda n: (-n.count("."), n)):  # nested first
        if dataset.get_field(name) is not None:
            bf.delete_field(dataset, name)
    kill_point("deleted")
    # registered first: from here on the record owns the fields, so a
    # process killed while declaring them leaves nothing a rerun refuses
    br.register_bifta_run(dataset, plan.run_key, params, overwrite=True)
    kill_point("registered")
    if plan.is_patches or plan.is_frames:
        if plan.is_patches:
            bp.declare_fields(dataset, plan.target, plan.fields)
        else:
            bf.declare_fields(dataset, plan.fields)
        kill_point("declared")
        return
    _declare_fields(dataset, plan.fields, plan.class_fields, plan.config)
    registered = dict(params["fields"])
    # <L>_best_crop (marked as BiFTA's in its field info, so a kill before
    # the record names it leaves nothing a rerun refuses); crops hidden
    bd.prepare_display(dataset, plan.fields, params)
    earlier = [
        info["fields"]["scores"]
        for info in br.RunRecords.load(dataset).infos()
        if info["key"] != plan.run_key and "scores" in (info.get("fields") or {})
    ]
    bd.promote_scores_group(dataset, plan.fields, earlier)
    if params["fields"] != registered:
        br.update_bifta_run(dataset, plan.run_key, fields=params["fields"])
    kill_point("declared")


def _declare_fields(dataset, fields: dict, class_fields: dict | None, config: BiftaConfig) -> None:
    """Create the run's fields and attributes up front.

    The batches are written as stored dicts without schema inference, so
    every path they hold is declared here; it also gives the App its sidebar
    filters from the start (one range slider per class under ``L_scores``).
    """

    def add(path, ftype, **kwargs):
        if dataset.get_field(path) is None:
            dataset.add_sample_field(path, ftype, **kwargs)

    for role, name in fields.items():
        if role == "error":
            add(name, fof.StringField)
        elif role == "embeddings":
            add(name, fof.VectorField)
        elif role == "scores" and class_fields:
            # All class attributes in one schema merge: each add_sample_field
            # reloads the dataset (see bench/bench_class_fields.py).
            dataset.add_sample_field(
                name,
                fof.EmbeddedDocumentField,
                embedded_doc_type=ROLE_TYPES[role],
                fields=[_named(fof.FloatField(), n) for n in class_fields.values()],
            )
        else:
            add(name, fof.EmbeddedDocumentField, embedded_doc_type=ROLE_TYPES[role])
    label = fields["label"]
    add(f"{label}.margin", fof.FloatField)
    add(f"{label}.score", fof.FloatField)
    if config.protocol == "resample":
        add(f"{label}.run_labels", fof.ListField, subfield=fof.StringField)
    if "crops" in fields:
        add(f"{fields['crops']}.detections.best", fof.BooleanField)
        add(f"{fields['crops']}.detections.description", fof.StringField)


def _named(field_, name: str):
    """A field instance for ``add_sample_field(fields=[...])`` (named by attribute,
    as FiftyOne's own ``create_field`` does)."""
    field_.name = name
    return field_


def samples_to_do(plan: RunPlan) -> tuple[list, list]:
    """``(ids, filepaths)`` of the samples the run processes: all of them,
    or with ``skip_existing`` those not done (see :func:`done_expression`)."""
    todo = plan.samples
    if plan.runtime.skip_existing:
        todo = todo.match(~done_expression(plan.fields))
    return todo.values(["id", "filepath"])


def iter_batches(
    plan: RunPlan, classifier: BiftaClassifier, result: RunResult, ids, paths, since=None
):
    """Predict and write the samples ``ids`` (media ``paths``) batch by
    batch; a ``"classify"`` event after each.

    Every yielded event follows a written batch, so closing the generator
    there (cancellation) loses no finished work. ``result``'s counters are
    kept current, including when it stops early.

    Yields:
        :class:`~bifta_plugin.core.progress.ProgressEvent` ``(done, total)``
        over the samples to do.

    ``result.images_per_s`` counts from ``since`` (``time.perf_counter()``
    before the fields were declared), so setting up the fields is part of
    the reported throughput.

    Raises:
        SampleFailedError: with ``skip_failures=False``, after writing the
            batch that holds the failure.
    """
    result.num_skipped = result.num_samples - len(ids)
    if not ids:
        return
    to_docs = dict(
        crops="crops" in plan.fields,
        class_fields=plan.class_fields,
        top_k=plan.output.top_k,
        embeddings="embeddings" in plan.fields,
    )
    start = time.perf_counter() if since is None else since
    batches = classifier.iter_predictions(paths, keys=paths)
    try:
        for number, batch in enumerate(_worker_errors(batches), 1):
            batch_ids = [ids[p.index] for p in batch]
            outputs = [bl.prediction_to_documents(p, plan.classes, **to_docs) for p in batch]
            with database_errors(f"writing batch {number}", result):
                _write_batch(plan.dataset, plan.fields, batch_ids, outputs, number)
            first_failure = _count(result, batch, batch_ids)
            if first_failure is not None and not plan.runtime.skip_failures:
                p = batch[first_failure]
                raise SampleFailedError(
                    f"sample {batch_ids[first_failure]} ({paths[p.index]}) failed: "
                    f"{p.error}. The {result.num_processed} predictions made so "
                    "far are saved; rerun with skip_existing=True to resume.",
                    batch_ids[first_failure],
                    paths[p.index],
                )
            done = result.num_processed + result.num_failed
            yield ProgressEvent("classify", done, len(ids), f"{done}/{len(ids)} samples")
    finally:
        batches.close()
        seconds = time.perf_counter() - start
        done = result.num_processed + result.num_failed
        result.images_per_s = done / seconds if seconds > 0 else 0.0


def _worker_errors(batches):
    """``batches``, with a DataLoader worker that died or delivered nothing
    within its timeout turned into an error that says what to do."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as e:
            if not str(e).startswith("DataLoader"):
                raise
            raise RuntimeError(
                f"the image decoding workers failed ({e}); rerun with "
                "num_workers=0 to decode in this process (BIFTA_WORKER_TIMEOUT_S "
                "sets how long a batch may take)"
            ) from e
        yield batch


def _write_batch(dataset, fields: dict, ids: list, outputs: list, number: int = 0) -> None:
    """One bulk write for the batch: one ``UpdateOne`` per sample that sets
    all its fields (and ``last_modified_at``) together, so each sample is
    written whole or not at all, whenever the process or the connection
    dies.

    The values are the stored form of the labels (:mod:`bifta_plugin.sdk.labels`
    builds them, tests check they load back as FiftyOne labels), passed
    through the declared fields' ``to_mongo`` as ``set_values`` does; the
    schema was declared by :func:`_declare_fields` (and the best crop's,
    :mod:`.display`, by :func:`prepare_dataset`).
    """
    from pymongo import UpdateOne
    from bson import ObjectId

    schema = {name: dataset.get_field(name) for name in fields.values()}
    best = bd.best_crops(dataset, fields, outputs)  # <L>_best_crop, in the same update
    now = datetime.datetime.utcnow()
    ops = []
    for i, (sid, out) in enumerate(zip(ids, outputs)):
        values = {name: _stored(schema[name], role, out[role]) for role, name in fields.items()}
        if best is not None:
            values[best[0]] = best[1][i]
        ops.append(UpdateOne({"_id": ObjectId(sid)}, {"$set": {**values, "last_modified_at": now}}))
    kill_point("before_batch", number)
    if _kill_at() == ("mid_batch", number):  # half the samples, as a cut connection can leave
        half = max(1, len(ops) // 2)
        dataset._bulk_write(ops[:half], ids=ids[:half])
        kill_point("mid_batch", number)
    dataset._bulk_write(ops, ids=ids)
    kill_point("after_batch", number)


def _stored(field_, role: str, value):
    """A label's stored form (embeddings: :func:`~.labels.embedding_bytes`)."""
    if value is None:
        return None
    if role == "embeddings":
        return bl.embedding_bytes(value)
    return field_.to_mongo(value)


def _count(result: RunResult, batch, ids) -> int | None:
    """Update the counters; returns the index of the batch's first failure."""
    first = None
    for i, (p, sid) in enumerate(zip(batch, ids)):
        if p.ok:
            result.num_processed += 1
            continue
        result.num_failed += 1
        if len(result.failures) < MAX_FAILURES_KEPT:
            result.failures.append((sid, p.error))
        if first is None:
            first = i
    return first


# ----------------------------------------------------------------------------
# Database loss
# ----------------------------------------------------------------------------
class database_errors:
    """Turns a lost database connection inside the block into a
    :class:`~.results.DatabaseUnavailableError` naming the database.

    The wait is bounded by the client's server selection timeout (pymongo's
    ``serverSelectionTimeoutMS``, 30 s unless the database URI sets it).
    """

    def __init__(self, doing: str, result: RunResult | None = None):
        self.doing, self.result = doing, result

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        from pymongo.errors import ConnectionFailure

        if exc is None or not isinstance(exc, ConnectionFailure):
            return False
        saved = ""
        if self.result is not None:
            saved = (
                f" The {self.result.num_processed + self.result.num_failed} samples "
                "written before are saved; once the database is back, rerun "
                "with skip_existing=True to resume."
            )
        raise DatabaseUnavailableError(
            f"lost the FiftyOne database {database_name()} while {self.doing} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).{saved}"
        ) from exc


def database_name() -> str:
    """``'name' at host:port`` of FiftyOne's database (no credentials)."""
    import fiftyone as fo

    uri = fo.config.database_uri or "the database FiftyOne started"
    if "@" in uri:  # mongodb://user:password@host -> mongodb://host
        scheme, _, rest = uri.partition("://")
        uri = f"{scheme}://{rest.rpartition('@')[2]}"
    return f"{fo.config.database_name!r} at {uri.split('?')[0]}"


# ----------------------------------------------------------------------------
# Test hook
# ----------------------------------------------------------------------------
#: ``BIFTA_TEST_KILL_AT=<boundary>:<n>`` (test hook, never set in use): the
#: process SIGKILLs itself at the n-th pass of a write boundary:
#: ``deleted``/``registered``/``declared`` (n = 1: run set-up, see
#: :func:`prepare_dataset`), ``before_batch``/``mid_batch``/``after_batch``
#: (n = the batch number; ``mid_batch`` first writes half its samples),
#: ``finishing`` (before the final status is recorded).
KILL_AT_ENV = "BIFTA_TEST_KILL_AT"


def _kill_at() -> tuple[str, int] | None:
    """The boundary ``BIFTA_TEST_KILL_AT`` names, or None (the usual case)."""
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return None
    boundary, _, n = spec.partition(":")
    return boundary, int(n or 1)


def kill_point(boundary: str, n: int = 1) -> None:
    """Test hook: SIGKILL this process here if ``BIFTA_TEST_KILL_AT`` says so."""
    if _kill_at() == (boundary, n):
        os.kill(os.getpid(), signal.SIGKILL)




def evaluate(plan: RunPlan, result: RunResult) -> None:
    if plan.is_patches or plan.is_frames:
        (bp if plan.is_patches else bf).evaluate(plan, result)
        return
    dataset, key = plan.dataset, plan.output.eval_key
    label, gt = plan.fields["label"], plan.output.gt_field
    view = plan.samples.exists(label).exists(gt)
    if dataset.has_evaluation(key):
        dataset.delete_evaluation(key)  # ours (checked up front): recompute
    result.num_evaluated = len(view)
    if result.num_evaluated == 0:
        logger.warning("no sample has both %r and %r: nothing to evaluate", label, gt)
        result.eval_key = None
        return
    results = view.evaluate_classifications(label, gt_field=gt, eval_key=key, progress=False)
    result.accuracy = float(results.metrics()["accuracy"])
    if plan.config.protocol == "resample":
        run_labels = view.values(f"{label}.run_labels")
        truth = view.values(f"{gt}.label")
        per_run = _per_run_accuracy(run_labels, truth)
        if per_run is not None:
            result.accuracy_runs_mean = float(per_run.mean())
            result.accuracy_runs_std = float(per_run.std(ddof=0))


def _per_run_accuracy(run_labels: list, truth: list) -> np.ndarray | None:
    """Accuracy of each run, np.ndarray[R], from per-sample run labels."""
    rows = [(r, t) for r, t in zip(run_labels, truth) if r]
    if not rows:
        return None
    num_runs = min(len(r) for r, _ in rows)
    correct = np.array([[r[i] == t for i in range(num_runs)] for r, t in rows])  # [N, R]
    return correct.mean(axis=0)


def finish_run(
    plan: RunPlan, result: RunResult, start: float, status: str, error: str | None = None
) -> None:
    result.elapsed_s = time.perf_counter() - start
    summary = result.to_dict()
    summary.pop("failures")
    summary["num_failures_kept"] = len(result.failures)
    if error is not None:
        summary["error"] = error
    kill_point("finishing")
    try:
        br.update_bifta_run(
            plan.dataset, plan.run_key, status=status, eval_key=result.eval_key, results=summary
        )
    except Exception:  # never mask the run's own error
        if status == "completed":
            raise
        logger.warning(
            "could not record the status %r of run %r (it stays 'running' until "
            "a rerun with the same run key replaces it)", status, plan.run_key, exc_info=True,
        )
