"""The SDK entry point: :func:`run_bifta` classifies a FiftyOne collection.

The operator, the CLI, :class:`~bifta_plugin.model.BiftaModel` and the
panels all go through this module. One call:

1. validates every argument and the dataset's existing fields and runs
   (:mod:`bifta_plugin.run_checks`; nothing is written if anything is
   wrong);
2. builds the encoder (or uses the one passed in) and one
   :class:`~bifta_plugin.pipeline.BiftaClassifier`;
3. registers a BiFTA run (:mod:`bifta_plugin.runs`) with full provenance;
4. streams predictions batch by batch and writes each batch in bulk
   (:mod:`bifta_plugin.run_writing`:
   ``set_values(..., key_field="id")``, one call per field), so an
   interrupted run keeps every finished batch and ``skip_existing=True``
   resumes it;
5. optionally evaluates against a ground-truth field.

Example::

    import fiftyone.zoo as foz
    from bifta_plugin import run_bifta

    dataset = foz.load_zoo_dataset("quickstart")  # any image dataset
    result = run_bifta(
        dataset,
        classes=["cat", "dog"],
        descriptions="descriptions/pets.json",
        label_field="bifta",
        gt_field="ground_truth",
    )
    print(result.summary())
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from . import writing as rw
from ..descriptions.files import DescriptionSet
from ..engine.pipeline import BiftaClassifier
from .results import MAX_FAILURES_KEPT, RunResult, SampleFailedError  # noqa: F401 (public)
from .plan import (  # noqa: F401 (resolve_* are public)
    check_existing,
    check_run_identity,
    make_plan,
    resolve_classes,
    resolve_descriptions,
)

logger = logging.getLogger(__name__)


def run_bifta(
    samples,
    classes: Sequence[str] | None = None,
    descriptions=None,
    *,
    label_field: str = "bifta",
    method: str = "bifta",
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 16,
    num_workers: int | None = None,
    crop_mode: str = "auto",
    classes_field: str | None = None,
    descriptions_format: str = "auto",
    skip_existing: bool = False,
    skip_failures: bool = True,
    gt_field: str | None = None,
    eval_key: str | None = None,
    run_key: str | None = None,
    max_class_fields: int = 100,
    top_k: int = 5,
    encoder=None,
    cache_dir=None,
    overwrite: bool = False,
    progress=None,
    **config_overrides,
) -> RunResult:
    """Classify every image of ``samples`` zero-shot and store the results.

    Fields written (``L`` = ``label_field``; see ``docs/ARCHITECTURE.md``):
    ``L`` (Classification with logits, ``margin``, ``score``), ``L_crops``
    (Detections, crop methods only), ``L_scores`` (one float per class, up
    to ``max_class_fields`` classes) or ``L_topk`` (Classifications, above
    it), ``L_error`` (failure message or None).

    Args:
        samples: a dataset or view of images.
        classes: class names; or use ``classes_field``.
        descriptions: for the description methods ("descriptions", "wca",
            "bifta"): a file path, a ``{class: [sentences]}`` mapping, a list
            of templates, or a :class:`~bifta_plugin.descriptions.DescriptionSet`.
            Every class needs at least one. Ignored (with a warning) by
            "clip" and "ensemble".
        label_field: the prediction field ``L``; the other fields are
            ``L_<suffix>``.
        method: "clip", "ensemble", "descriptions", "wca" or "bifta".
        model_name, pretrained, device, precision, cache_dir: the encoder
            (see :func:`bifta_plugin.encoders.create_encoder`); ignored when
            ``encoder`` is given.
        batch_size, num_workers, crop_mode: see
            :class:`~bifta_plugin.pipeline.RuntimeOptions`.
        classes_field: take the classes from this Classification field
            (its distinct labels in ``samples``, sorted).
        descriptions_format: "auto", "cupl", "dclip" or "templates".
        skip_existing: only process samples whose ``L`` and ``L_error`` are
            both empty (resume an interrupted run). To retry failures, run on
            ``samples.exists("L_error")`` without it.
        skip_failures: record a failing image in ``L_error`` and go on;
            False raises :class:`SampleFailedError` after writing the
            batch that contains it.
        gt_field: a Classification field to evaluate against
            (``evaluate_classifications``).
        eval_key: the evaluation key (default ``"eval_" + run_key``).
        run_key: the run key (default ``label_field``); a valid identifier.
        max_class_fields: write ``L_scores`` up to this many classes, else
            ``L_topk``.
        top_k: classes kept in ``L_topk``.
        encoder: a :class:`~bifta_plugin.encoders.ClipEncoder` to reuse.
        overwrite: allow replacing existing fields of these names that this
            run key did not write (they are deleted first), an existing run
            with this key but another configuration (deleted with its
            fields and evaluation), and an existing evaluation ``eval_key``.
        progress: like FiftyOne's: None uses
            ``fiftyone.config.show_progress_bars``, True/False force it, a
            callable is called with the
            :class:`fiftyone.core.utils.ProgressBar` after each batch (e.g.
            from ``fo.report_progress``).
        **config_overrides: :func:`bifta_plugin.config.get_config`
            overrides (``num_candidates=8``, ``protocol="resample"``, ...).

    Returns:
        A :class:`RunResult`.

    Raises:
        ValueError: a bad argument, or an existing field/run/evaluation that
            ``overwrite`` would be needed to replace; nothing is written.
        SampleFailedError: with ``skip_failures=False``.
    """
    start = time.perf_counter()
    plan = make_plan(
        samples,
        classes,
        descriptions,
        label_field=label_field,
        method=method,
        batch_size=batch_size,
        num_workers=num_workers,
        crop_mode=crop_mode,
        classes_field=classes_field,
        descriptions_format=descriptions_format,
        skip_existing=skip_existing,
        skip_failures=skip_failures,
        gt_field=gt_field,
        eval_key=eval_key,
        run_key=run_key,
        max_class_fields=max_class_fields,
        top_k=top_k,
        overwrite=overwrite,
        config_overrides=config_overrides,
    )
    check_existing(plan)

    if encoder is None:
        from ..engine.encoders import create_encoder

        encoder = create_encoder(
            model_name, pretrained, device=device, precision=precision, cache_dir=cache_dir
        )
    if plan.descriptions is not None and hasattr(encoder, "count_truncated"):
        _report_truncation(plan.descriptions, encoder)
    classifier = BiftaClassifier(
        encoder,
        plan.classes,
        plan.descriptions.descriptions if plan.descriptions is not None else None,
        config=plan.config,
        runtime=plan.runtime,
    )
    params = rw.run_params(plan, classifier)
    check_run_identity(plan, params)

    rw.prepare_dataset(plan, params)
    result = RunResult(
        run_key=plan.run_key,
        label_field=plan.label_field,
        fields=dict(plan.fields),
        method=plan.config.method,
        num_samples=len(plan.samples),
        crop_mode=classifier.crop_mode,
        device=str(classifier.device),
        eval_key=plan.eval_key,
        descriptions_kept=params["descriptions_kept"] if plan.descriptions else None,
        descriptions_report=plan.descriptions.summary() if plan.descriptions else None,
    )
    try:
        rw.predict_and_write(plan, classifier, result, progress)
        if plan.gt_field is not None:
            rw.evaluate(plan, result)
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        rw.finish_run(plan, result, start, status, error=f"{type(e).__name__}: {e}")
        raise
    rw.finish_run(plan, result, start, "completed")
    return result


def _report_truncation(descriptions: DescriptionSet, encoder) -> None:
    """Count the texts the tokenizer will cut at its context length; the
    count goes into the description report (and the run record)."""
    truncated = descriptions.check_lengths(encoder.count_truncated)
    if truncated:
        logger.warning(
            "%d of %d descriptions exceed the text encoder's context of %s "
            "tokens and are truncated when encoded",
            truncated, descriptions.report.total, getattr(encoder, "context_length", "?"),
        )
