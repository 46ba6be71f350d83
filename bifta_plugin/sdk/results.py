"""What one :func:`bifta_plugin.sdk.run.run_bifta` call did, and the error it
raises with ``skip_failures=False``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..descriptions.files import refinement_summary

#: failures kept in :attr:`RunResult.failures` (all are counted)
MAX_FAILURES_KEPT = 100


class SampleFailedError(RuntimeError):
    """Raised by :func:`run_bifta` with ``skip_failures=False``.

    Everything processed before (the failing batch included, with the
    failure recorded in ``<label_field>_error``) has been written.

    Attributes:
        sample_id: the failing sample.
        filepath: its media path.
    """

    def __init__(self, message: str, sample_id: str, filepath: str):
        super().__init__(message)
        self.sample_id = sample_id
        self.filepath = filepath


class DatabaseUnavailableError(RuntimeError):
    """Raised by :func:`run_bifta` when the FiftyOne database cannot be
    reached while writing (the wait is bounded by the client's server
    selection timeout). Every batch written before is saved and the run is
    recorded "interrupted" when the database can still be reached, else by
    the next run with the same key; ``skip_existing=True`` resumes it."""


@dataclass
class RunResult:
    """What one :func:`run_bifta` call did.

    Attributes:
        run_key: the BiFTA run's key.
        label_field: the prediction field ``L``.
        fields: role -> field name of every field written.
        method: the BiFTA method.
        num_samples: samples in the target collection.
        num_processed: samples that got a prediction in this call.
        num_skipped: samples skipped by ``skip_existing``.
        num_failed: samples that failed (message in ``L_error``).
        failures: ``(sample id, message)``, at most
            :data:`MAX_FAILURES_KEPT`.
        accuracy: accuracy against ``gt_field`` over the samples with both a
            prediction and a ground truth (None without ``gt_field``).
        num_evaluated: samples in that evaluation.
        eval_key: the evaluation key (None without ``gt_field``).
        accuracy_runs_mean, accuracy_runs_std: resample protocol only: mean
            and population std (ddof=0) of the per-run accuracies.
        elapsed_s: wall time of the whole call.
        images_per_s: images (processed or failed) per second, from
            declaring the fields to the last write (field setup, decoding,
            encoding, scoring and writing; not model loading).
        crop_mode: the resolved crop mode ("exact" or "fast").
        device: where the encoder ran.
        descriptions_kept: per class ``{label, candidates, kept}``: how many
            descriptions BiFTA's refinement kept (description methods only).
        unit: what the counts count: "samples", or "objects" for a
            patches run (``num_samples`` is then the objects targeted and
            ``images_per_s`` objects per second).
        descriptions_report: what loading the descriptions did (classes
            covered, texts, duplicates, unmatched keys, merged keys, texts
            truncated by the tokenizer, generation), as lines; None for
            methods without descriptions.
    """

    run_key: str
    label_field: str
    fields: dict = field(default_factory=dict)
    method: str = ""
    num_samples: int = 0
    num_processed: int = 0
    num_skipped: int = 0
    num_failed: int = 0
    failures: list = field(default_factory=list)
    accuracy: float | None = None
    num_evaluated: int = 0
    eval_key: str | None = None
    accuracy_runs_mean: float | None = None
    accuracy_runs_std: float | None = None
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    crop_mode: str = ""
    device: str = ""
    descriptions_kept: list | None = None
    descriptions_report: str | None = None
    unit: str = "samples"

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (failures as ``[id, message]`` lists)."""
        d = asdict(self)
        d["failures"] = [list(f) for f in self.failures]
        return d

    def summary(self) -> str:
        """One human-readable paragraph."""
        parts = [
            f"BiFTA run {self.run_key!r} ({self.method}) -> {self.label_field!r}: "
            f"{self.num_processed} processed, {self.num_skipped} skipped, "
            f"{self.num_failed} failed of {self.num_samples} {self.unit} "
            f"in {self.elapsed_s:.1f}s ({format_rate(self.images_per_s)}, "
            f"{self.device}, crop mode {self.crop_mode})."
        ]
        if self.accuracy is not None:
            parts.append(
                f"Accuracy {self.accuracy:.4f} on {self.num_evaluated} {self.unit} "
                f"(eval key {self.eval_key!r})."
            )
        if self.accuracy_runs_mean is not None:
            parts.append(
                f"Resample protocol: {self.accuracy_runs_mean:.4f} "
                f"+/- {self.accuracy_runs_std:.4f} over runs."
            )
        if self.descriptions_kept:
            line = refinement_summary(self.descriptions_kept)
            parts.append(line[0].upper() + line[1:] + ".")
        if self.failures:
            sid, msg = self.failures[0]
            parts.append(f"First failure: sample {sid}: {msg}")
        return " ".join(parts)


def format_rate(images_per_s: float) -> str:
    """Throughput with 3 significant digits; seconds per image below 1/s.

    ``"12.3 images/s"``; below one image per second ``"2.37 s/image"``
    (a fixed one decimal would print a slow CPU run as "0.0 images/s").
    """
    if images_per_s <= 0:
        return "no images timed"
    if images_per_s >= 1:
        return f"{images_per_s:.3g} images/s"
    return f"{1 / images_per_s:.3g} s/image"
