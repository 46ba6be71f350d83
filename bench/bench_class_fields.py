"""Declaring per-class score fields: one add_sample_field per class vs one schema merge.

Builds a dataset of N samples (file paths only: declaring fields reads no
images) and times, for C classes, the per-class loop (each call reloads the
dataset) against ``sdk.writing._declare_fields`` (all class attributes in one
``add_sample_field(..., fields=[...])``). Uses a throwaway database directory.

Example::

    python bench/bench_class_fields.py --samples 500 --classes 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--classes", type=int, default=50)
    args = p.parse_args(argv)

    os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="bifta-bench-db-"))
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo
    import fiftyone.core.fields as fof

    from bifta_plugin.core.config import get_config
    from bifta_plugin.sdk import writing
    from bifta_plugin.sdk.labels import field_names, safe_field_names
    from bifta_plugin.sdk.plan import ROLE_TYPES

    classes = [f"class {i}" for i in range(args.classes)]
    class_fields = safe_field_names(classes)
    config = get_config("bifta")
    names = field_names("bifta")
    fields = {k: names[k] for k in ("label", "crops", "scores", "error")}

    def dataset():
        ds = fo.Dataset()
        ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(args.samples)])
        return ds

    ds = dataset()
    start = time.perf_counter()
    ds.add_sample_field(fields["scores"], fof.EmbeddedDocumentField,
                        embedded_doc_type=ROLE_TYPES["scores"])
    for name in class_fields.values():
        ds.add_sample_field(f"{fields['scores']}.{name}", fof.FloatField)
    per_class = time.perf_counter() - start
    ds.delete()

    ds = dataset()
    start = time.perf_counter()
    writing._declare_fields(ds, fields, class_fields, config)
    merged = time.perf_counter() - start
    ds.delete()
    print(f"{args.classes} class fields on {args.samples} samples: one add_sample_field per "
          f"class {per_class:.2f} s (score field only); _declare_fields (all run fields, "
          f"classes in one merge) {merged:.2f} s")


if __name__ == "__main__":
    main()
