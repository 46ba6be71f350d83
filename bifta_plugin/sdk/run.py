"""The SDK entry points: :func:`iter_bifta` and :func:`run_bifta` classify a
FiftyOne collection.

The operator, the CLI and the panels all go through this module.
:func:`iter_bifta` is the run itself, as an iterator of progress events;
:func:`run_bifta` drains it. One run:

1. plans (:mod:`.plan`): validates every argument and compares it with the
   dataset's existing fields, runs and evaluations; nothing is written if
   anything is wrong, or if ``overwrite`` would be needed;
2. takes the run's lease (:mod:`.lease`; of one shard with
   ``runtime.shard``, :mod:`.shards`): refused while another live process
   runs this run key, renewed between batches;
3. builds the encoder (:class:`~.options.EncoderSpec`) and one
   :class:`~bifta_plugin.engine.pipeline.BiftaClassifier`;
4. registers a BiFTA run (:mod:`.records`) with full provenance (a
   sharded run: its first shard);
5. streams predictions batch by batch and writes each batch in bulk
   (:mod:`.writing`; each sample whole or not at all), yielding a progress
   event after each, so an interrupted, cancelled or killed run keeps every
   finished sample and ``skip_existing=True`` resumes it;
6. optionally evaluates against a ground-truth field (a sharded run: the
   process that completes its last shard, once).

Example::

    import fiftyone.zoo as foz
    from bifta_plugin.sdk.options import OutputSpec
    from bifta_plugin.sdk.run import run_bifta

    dataset = foz.load_zoo_dataset("quickstart")  # any image dataset
    result = run_bifta(
        dataset,
        ["cat", "dog"],
        "descriptions/pets.json",
        output=OutputSpec("bifta", gt_field="ground_truth"),
    )
    print(result.summary())

    # the same run, step by step; closing the iterator cancels it
    for event in iter_bifta(dataset, ["cat", "dog"], "descriptions/pets.json"):
        print(event.message)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from typing import Iterator, Sequence

import fiftyone.core.utils as fou

from . import frames as bf
from . import lease as bls
from . import patches as bp
from . import shards as bsh
from . import writing as rw
from ..core import defaults
from ..core.progress import DONE, ProgressEvent
from ..engine.pipeline import BiftaClassifier
from .options import EncoderSpec, OutputSpec, RunOptions, TargetSpec
from .plan import Deletions, RunPlan, existing_conflicts, make_plan, run_identity_conflict
from .results import DatabaseUnavailableError, RunResult

logger = logging.getLogger(__name__)


def iter_bifta(
    samples,
    classes: Sequence[str] | None = None,
    descriptions=None,
    *,
    method: str = defaults.METHOD,
    classes_field: str | None = None,
    descriptions_format: str = defaults.DESCRIPTIONS_FORMAT,
    encoder: EncoderSpec = EncoderSpec(),
    runtime: RunOptions = RunOptions(),
    output: OutputSpec = OutputSpec(),
    target: TargetSpec = TargetSpec(),
    overwrite: bool = False,
    **config_overrides,
) -> Iterator[ProgressEvent]:
    """Classify every image of ``samples`` zero-shot, one event at a time.

    The arguments are checked against the dataset when this is *called*
    (bad ones raise here, before anything is written); the work happens as
    the returned iterator is consumed.

    Fields written (``L`` = ``output.label_field``; see
    ``docs/ARCHITECTURE.md``): ``L`` (Classification with logits,
    ``margin``, ``score``), ``L_crops`` (Detections, crop methods only),
    ``L_scores`` (one float per class, up to ``output.max_class_fields``
    classes) or ``L_topk`` (Classifications, above it), ``L_error``
    (failure message or None).

    Args:
        samples: a dataset or view of images; a ``to_patches()`` view (its
            objects are classified, :mod:`~.patches`); or a video dataset or
            view (its frames are classified, :mod:`~.frames`).
        classes: class names; or use ``classes_field``.
        descriptions: for the description methods ("descriptions", "wca",
            "bifta"): a file path, a ``{class: [sentences]}`` mapping, a list
            of templates, or a :class:`~bifta_plugin.descriptions.files.DescriptionSet`.
            Every class needs at least one. Ignored (with a warning) by
            "clip" and "ensemble".
        method: "clip", "ensemble", "descriptions", "wca" or "bifta".
        classes_field: take the classes from this Classification field
            (its distinct labels in ``samples``, sorted).
        descriptions_format: "auto", "cupl", "dclip" or "templates".
        encoder: the model (:class:`~.options.EncoderSpec`).
        runtime: batching, workers, crops, resuming and failures
            (:class:`~.options.RunOptions`).
        output: field names, keys and evaluation
            (:class:`~.options.OutputSpec`).
        target: whole images (default) or the objects of a Detections
            field (:class:`~.options.TargetSpec`, :mod:`~.patches`); a
            ``to_patches()`` view as ``samples`` classifies its objects.
        overwrite: allow deleting what the plan lists in
            :attr:`~.plan.RunPlan.deletions`: existing fields of these names
            that this run key did not write, an existing run with this key
            but another configuration (with its fields and evaluation), an
            existing evaluation ``eval_key``. :func:`~.plan.make_plan` shows
            that list without running.
        **config_overrides: :func:`bifta_plugin.core.config.get_config`
            overrides (``num_candidates=8``, ``protocol="resample"``, ...).

    Returns:
        An iterator of :class:`~bifta_plugin.core.progress.ProgressEvent`:
        ``"setup"`` once the model is ready and the run registered,
        ``"classify"`` after each written batch (``done``/``total``
        samples), ``"evaluate"`` before the evaluation, and a final
        ``"done"`` event whose ``result`` is the :class:`RunResult`.
        Closing it early (``close()``; the App does when its client goes)
        cancels the run: it is recorded as ``"interrupted"`` with its
        counts, and ``skip_existing=True`` resumes it. So are SIGINT
        (Ctrl-C) and, in the main thread where SIGTERM has its default
        action, SIGTERM (``docker stop``, Kubernetes, systemd): it raises
        :class:`Terminated`, a ``KeyboardInterrupt``, once the run is
        recorded.

    Raises:
        ValueError: a bad argument, or an existing field/run/evaluation that
            ``overwrite`` would be needed to replace; nothing is written.
            (A run key reused with another model or configuration is only
            known once the encoder is built: raised by the first ``next``.)
        SampleFailedError: while iterating, with
            ``runtime.skip_failures=False``.
        DatabaseUnavailableError: while iterating, when the database is
            lost (the run is "interrupted"; resume once it is back).
        LeaseHeldError: by the first ``next``: another live process runs
            this run key (or shard); the message names it and how to take
            over (``runtime.take_over=True``).
        LeaseLostError: while iterating: another process took the lease
            over; the batches written so far are kept.
    """
    plan = make_plan(
        samples,
        classes,
        descriptions,
        method=method,
        classes_field=classes_field,
        descriptions_format=descriptions_format,
        runtime=runtime,
        output=output,
        target=target,
        overwrite=overwrite,
        config_overrides=config_overrides,
    )
    if not _is_sharded(plan):  # a shard checks once the run is set up
        plan.require_allowed()
    if not isinstance(encoder, EncoderSpec):
        raise ValueError(
            f"encoder must be an EncoderSpec (EncoderSpec(instance=...) to reuse "
            f"a built encoder); got {type(encoder).__name__}"
        )
    return _run(plan, encoder)


def run_bifta(samples, classes=None, descriptions=None, *, progress=None, **kwargs) -> RunResult:
    """:func:`iter_bifta` run to the end (same arguments); returns its
    :class:`RunResult`.

    Args:
        progress: like FiftyOne's: None uses
            ``fiftyone.config.show_progress_bars``, True/False force it, a
            callable is called with the
            :class:`fiftyone.core.utils.ProgressBar` after each batch (e.g.
            from ``fo.report_progress``). An exception it raises stops the
            run there (a KeyboardInterrupt is recorded as "interrupted").
    """
    events = iter_bifta(samples, classes, descriptions, **kwargs)
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.closing(events))  # an error here cancels the run
        pb = None
        for event in events:
            if event.is_final:
                return event.result
            try:
                if event.phase == "setup" and event.total:
                    pb = stack.enter_context(fou.ProgressBar(total=event.total, progress=progress))
                elif event.phase == "classify":
                    pb.set_iteration(event.done)
            except BaseException as e:  # recorded by the run, then re-raised
                events.throw(e)
    raise RuntimeError("the run ended without a result")


def _run(plan: RunPlan, spec: EncoderSpec) -> Iterator[ProgressEvent]:
    """The run's work as a generator (see :func:`iter_bifta`)."""
    start = time.perf_counter()
    # the lease first: a second process on this run key is refused before
    # it loads a model or deletes anything (see .lease)
    lease = bls.acquire(
        plan.dataset, plan.run_key, plan.runtime.shard, take_over=plan.runtime.take_over
    )
    run = _LeasedRun(plan, lease, start)
    with _terminate_as_interrupt():
        try:
            yield from run.events(spec)
        except BaseException as e:
            run.record_stop(e)
            raise
        finally:
            lease.stop_heartbeat()


@dataclasses.dataclass
class _LeasedRun:
    """One run (or shard) under its lease: the steps of :func:`_run` and
    what they have done so far, so a stop is recorded where it belongs."""

    plan: RunPlan
    lease: bls.Lease
    start: float
    result: RunResult | None = None
    registered: bool = False  # the run record is this run's
    released: bool = False  # the lease is ended
    finished: bool = False  # the run is recorded as completed

    def events(self, spec: EncoderSpec) -> Iterator[ProgressEvent]:
        encoder = spec.build()
        self.plan = plan = _with_truncation(self.plan, encoder)
        classifier = BiftaClassifier(
            encoder,
            list(plan.classes),
            plan.descriptions.descriptions if plan.descriptions is not None else None,
            config=plan.config,
            runtime=plan.engine,
        )
        params = rw.run_params(plan, classifier)
        writing_start = time.perf_counter()  # setting up the fields counts in images/s
        self._prepare(params)
        plan = self.plan
        part = dataclasses.replace(
            plan, samples=bsh.shard_view(plan.samples, self.lease.index, self.lease.num_shards)
        )
        self.result = result = _new_result(part, classifier, params)
        if plan.is_frames:
            videos, result.num_samples = bf.list_frames(part, part.samples)
            todo, unit = bf.count_frames(videos), "frames"
            result.num_skipped = result.num_samples - todo
            batches = bf.iter_batches(part, classifier, result, videos, since=writing_start)
        elif plan.is_patches:
            objects = bp.list_objects(part, part.samples)
            result.num_samples = _count_objects(part)
            todo, unit = len(objects.sources), "objects"
            batches = bp.iter_batches(part, classifier, result, objects, since=writing_start)
        else:
            ids, paths = rw.samples_to_do(part)
            todo, unit = len(ids), "samples"
            batches = rw.iter_batches(part, classifier, result, ids, paths, since=writing_start)
        yield ProgressEvent(
            "setup", 0, todo,
            f"model ready on {result.device}; {todo} of {result.num_samples} {unit} to do"
            + (f" (shard {self.lease.index}/{self.lease.num_shards})" if self.lease.sharded else ""),
        )
        for event in batches:
            self.lease.beat(event.done, event.total)  # raises LeaseLostError
            yield event
        final = bsh.complete_shard(self.lease, result)
        self.released = True
        if final is None:  # other shards are still running
            yield ProgressEvent(DONE, result.num_samples, result.num_samples, result.summary(), result)
            return
        self.registered = True  # the finaliser records the run's end
        if self.lease.sharded:
            self.result = result = bsh.merged_result(result, final, len(plan.samples))
        if plan.output.gt_field is not None:
            yield ProgressEvent("evaluate", 0, 1, f"evaluating against {plan.output.gt_field!r}")
            rw.evaluate(plan, result)
        rw.finish_run(plan, result, self.start, "completed")
        self.finished = True  # closing the iterator after the result is no cancellation
        yield ProgressEvent(DONE, result.num_samples, result.num_samples, result.summary(), result)

    def _prepare(self, params: dict) -> None:
        """Check the plan, register the run and declare its fields: here for
        a whole run; in the first shard of a sharded run, the others
        checking after it that nothing conflicts with the run it set up
        (the same configuration in every shard)."""

        def prepare():
            self.plan = dataclasses.replace(
                self.plan, deletions=self.plan.deletions | run_identity_conflict(self.plan, params)
            ).require_allowed()
            rw.prepare_dataset(self.plan, params)

        if not self.lease.sharded:
            prepare()
            self.registered = True
            return
        if bsh.setup_once(self.lease, prepare):
            return
        self.plan.dataset.reload()
        plan = dataclasses.replace(self.plan, deletions=Deletions())
        conflict = existing_conflicts(plan)
        conflict |= run_identity_conflict(plan, params)
        if conflict:
            raise ValueError(
                f"shard {self.lease.index}/{self.lease.num_shards}: "
                + "; ".join(conflict.reasons) + " (every shard must run the configuration "
                "the run was set up with)"
            )
        self.plan = plan

    def record_stop(self, e: BaseException) -> None:
        """Record why the run (or shard) stopped, never masking ``e``."""
        if self.finished or isinstance(e, bls.LeaseLostError):
            return  # recorded already, or by the lease's new holder
        status, error = _stop_status(e)
        if not self.released:
            counts = bsh.counts_of(self.result) if self.result is not None else None
            try:
                self.lease.release(status, counts=counts, error=error)
            except Exception:
                logger.warning("could not release the lease of %r", self.plan.run_key, exc_info=True)
        if self.registered and self.result is not None:
            rw.finish_run(self.plan, self.result, self.start, status, error=error)


def _is_sharded(plan: RunPlan) -> bool:
    return plan.runtime.shard is not None and plan.runtime.shard[1] > 1


def _stop_status(error: BaseException) -> tuple[str, str]:
    """``(status, message)`` recorded for a run stopped by ``error``.

    A cancellation (GeneratorExit: the consumer closed the iterator), a
    signal or a lost database interrupts the run (a resume continues it);
    anything else fails it.
    """
    from pymongo.errors import ConnectionFailure

    if isinstance(error, GeneratorExit):
        return "interrupted", "cancelled"
    stopped = isinstance(error, (KeyboardInterrupt, DatabaseUnavailableError, ConnectionFailure))
    return ("interrupted" if stopped else "failed"), f"{type(error).__name__}: {error}"


class Terminated(KeyboardInterrupt):
    """SIGTERM received during a run: it stops like Ctrl-C (recorded
    "interrupted" with its counts, workers shut down), then this is raised."""


class _terminate_as_interrupt:
    """While entered, SIGTERM raises :class:`Terminated` in the main thread.

    Only where SIGTERM still has its default action (which would kill the
    process without recording anything): a host application's own handler
    is left alone, and signals can only be handled in the main thread.
    """

    def __init__(self):
        self.installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _raise_terminated)
                self.installed = True
        return self

    def __exit__(self, *exc):
        if self.installed and signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.installed = False
        return False


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills
    raise Terminated(f"terminated by signal {signal.Signals(signum).name}")


def _with_truncation(plan: RunPlan, encoder) -> RunPlan:
    """The plan with the texts the tokenizer will cut at its context length
    counted in the descriptions' report (and so in the run record)."""
    descriptions = plan.descriptions
    if descriptions is None or not hasattr(encoder, "count_truncated"):
        return plan
    checked = descriptions.with_lengths_checked(
        encoder.count_truncated, getattr(encoder, "context_length", None)
    )
    truncated = checked.report.truncated
    if truncated:
        logger.warning(
            "%d of %d descriptions exceed the text encoder's context of %s "
            "tokens and are truncated when encoded",
            truncated, checked.report.total, getattr(encoder, "context_length", "?"),
        )
    return dataclasses.replace(plan, descriptions=checked)


def _count_objects(plan: RunPlan) -> int:
    """The objects a patches run targets in ``plan.samples`` (all of their
    objects, or those of the patches view the run was given; a shard's
    samples hold only part of those)."""
    path = f"{plan.target.patches_field}.detections"
    if plan.object_ids is not None:
        ids = plan.samples.values(f"{path}.id", unwind=True)
        return sum(1 for i in ids if i is not None and str(i) in plan.object_ids)
    return int(plan.samples.count(path))


def _new_result(plan: RunPlan, classifier: BiftaClassifier, params: dict) -> RunResult:
    desc = plan.descriptions
    return RunResult(
        run_key=plan.run_key,
        label_field=plan.label_field,
        fields=dict(plan.fields),
        method=plan.config.method,
        num_samples=plan.samples.count("id"),  # not len(): an estimate, stale after a database crash
        crop_mode=classifier.crop_mode,
        device=str(classifier.device),
        eval_key=plan.output.eval_key,
        descriptions_kept=params["descriptions_kept"] if desc else None,
        descriptions_report=desc.summary() if desc else None,
        unit="objects" if plan.is_patches else "frames" if plan.is_frames else "samples",
    )
