"""Exporting accepted labels with FiftyOne's own exporters, in one call.

:func:`export_accepted` writes, under ``export_dir``:

- ``tree/``: an image-classification directory tree (``<class>/<image>``,
  ``fo.types.ImageClassificationDirectoryTree``) of the accepted samples;
- ``labels.csv``: ``filepath,label,confidence`` of the accepted samples
  (``fo.types.CSVDataset``, absolute paths, media not copied);
- ``abstained.csv``: ``filepath,reason`` of the samples that abstained (the
  review queue of a pre-label run), so nothing is silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .prelabel import REASON_SUFFIX

FORMATS = ("tree", "csv")


@dataclass
class ExportResult:
    export_dir: str
    num_accepted: int
    num_abstained: int
    paths: dict  # what was written: {"tree": dir, "csv": file, "abstained": file}


def export_accepted(
    samples,
    label_field: str,
    export_dir: str,
    *,
    formats=FORMATS,
    reason_field: str | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export the labels of ``label_field`` and list the abstained samples.

    Args:
        samples: the collection.
        label_field: a ``fo.Classification`` field (e.g. ``prelabel``, or
            the ground truth after accepting).
        export_dir: output directory.
        formats: any of ``"tree"`` and ``"csv"``.
        reason_field: the abstention reasons (default
            ``<label_field>_reason`` when it exists); samples without a label
            are listed with their reason (or ``"no_label"``).
        overwrite: allow a non-empty ``export_dir``.

    Raises:
        ValueError: unknown format, missing field, or a non-empty directory
            without ``overwrite``.
    """
    import fiftyone as fo

    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats}")
    if samples.get_field(label_field) is None:
        raise ValueError(f"field {label_field!r} does not exist")
    if os.path.isdir(export_dir) and os.listdir(export_dir) and not overwrite:
        raise ValueError(f"{export_dir} is not empty (overwrite=True to write into it)")
    if reason_field is None and samples.get_field(label_field + REASON_SUFFIX) is not None:
        reason_field = label_field + REASON_SUFFIX
    accepted = samples.exists(label_field)
    abstained = samples.exists(label_field, False)
    paths = {}
    if "tree" in formats and len(accepted):
        paths["tree"] = os.path.join(export_dir, "tree")
        accepted.export(
            export_dir=paths["tree"],
            dataset_type=fo.types.ImageClassificationDirectoryTree,
            label_field=label_field,
            overwrite=overwrite,
            progress=False,
        )
    if "csv" in formats:
        paths["csv"] = os.path.join(export_dir, "labels.csv")
        accepted.export(
            labels_path=paths["csv"],
            dataset_type=fo.types.CSVDataset,
            fields={
                "filepath": "filepath",
                f"{label_field}.label": "label",
                f"{label_field}.confidence": "confidence",
            },
            export_media=False,
            abs_paths=True,
            progress=False,
        )
    paths["abstained"] = os.path.join(export_dir, "abstained.csv")
    if reason_field:
        files, reasons = abstained.values(["filepath", reason_field])
    else:
        files, reasons = abstained.values("filepath"), []
    reasons = [r or "no_label" for r in reasons] or ["no_label"] * len(files)
    _write_csv(paths["abstained"], ["filepath", "reason"], zip(files, reasons))
    return ExportResult(export_dir, len(accepted), len(files), paths)


def _write_csv(path: str, header: list, rows) -> None:
    import csv

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
