"""Input rules shared by the SDK, the CLI and the forms.

One implementation per rule, so that what :func:`~bifta_plugin.sdk.run.run_bifta`
accepts is what the CLI and the App's form accept:

- :func:`field_name_error`: the names a run may write (label field);
- :func:`classification_fields` / :func:`check_classification_field`: the
  fields that can be ground truth or a source of classes;
- :func:`field_classes` / :func:`distinct_labels`: the classes a
  Classification field gives;
- :func:`done_expression`: the samples a run already finished (what
  ``skip_existing`` skips, and what the form counts before a run);
- method rules (off-method options, missing descriptions) are in
  :mod:`bifta_plugin.core.methods`; class-list files are read by
  :func:`bifta_plugin.descriptions.files.load_classes`.

Imports only FiftyOne's field and label classes (no torch, no engine), so the
forms can call every rule on every change.
"""

from __future__ import annotations

import re
from typing import Any

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
from fiftyone import ViewField as F

# A new top-level field: letters, digits and underscores, starting with a
# letter. Stricter than MongoDB needs ("-" and spaces are legal there) but
# every such name works in view expressions, run keys and the App.
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def field_name_error(name: Any, what: str = "label_field") -> str | None:
    """Why ``name`` cannot be a field a run writes, or None if it can."""
    if not isinstance(name, str) or not name:
        return f"{what} must be a non-empty field name; got {name!r}"
    if not _FIELD_NAME.fullmatch(name):
        return (
            f"invalid {what} {name!r}: not a valid field name; use letters, "
            "digits and underscores, starting with a letter (e.g. 'bifta_v2')"
        )
    return None


def check_field_name(name: Any, what: str = "label_field") -> str:
    """``name`` if :func:`field_name_error` finds nothing, else ValueError."""
    message = field_name_error(name, what)
    if message:
        raise ValueError(message)
    return name


def is_classification_field(field) -> bool:
    """A field holding exactly ``fo.Classification`` labels."""
    return (
        isinstance(field, fof.EmbeddedDocumentField)
        and field.document_type is fol.Classification
    )


def detections_fields(collection) -> list[str]:
    """The top-level Detections fields of ``collection``, sorted: the fields
    a patches run accepts as ``patches_field``."""
    return sorted(
        name
        for name, f in collection.get_field_schema().items()
        if isinstance(f, fof.EmbeddedDocumentField) and f.document_type is fol.Detections
    )


def classification_fields(collection) -> list[str]:
    """The Classification fields of ``collection`` (dotted paths for nested
    ones, none inside list fields), sorted: exactly the fields
    :func:`check_classification_field` accepts."""
    schema = collection.get_field_schema(flat=True)
    list_roots = tuple(
        path + "." for path, f in schema.items() if isinstance(f, fof.ListField)
    )
    return sorted(
        path
        for path, f in schema.items()
        if is_classification_field(f) and not path.startswith(list_roots)
    )


def check_classification_field(collection, name, what: str) -> None:
    """Raise ValueError unless ``name`` is a Classification field of ``collection``."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a field name; got {name!r}")
    field = collection.get_field(name)
    if field is None:
        raise ValueError(f"{what} {name!r} does not exist in this collection")
    if not is_classification_field(field):
        raise ValueError(f"{what} {name!r} must be a Classification field; got {field}")


def distinct_labels(collection, field: str) -> list[str]:
    """The distinct labels of Classification field ``field`` in
    ``collection``, sorted (one aggregation; empty when it has none)."""
    return sorted(x for x in collection.distinct(f"{field}.label") if x is not None)


def field_classes(samples, field: str) -> list[str]:
    """The classes a Classification field gives: its distinct labels over
    the **whole dataset** of ``samples``, sorted.

    The dataset's, not the view's: a run on a few selected samples still
    chooses among every class the field knows (the label space does not
    shrink with the selection), and the form, the CLI and the SDK list the
    same classes for the same field.

    Raises:
        ValueError: not a Classification field, or no labels in the dataset.
    """
    dataset = samples._dataset if hasattr(samples, "_dataset") else samples
    check_classification_field(dataset, field, "classes_field")
    classes = distinct_labels(dataset, field)
    if not classes:
        raise ValueError(f"classes_field {field!r} has no labels in dataset {dataset.name!r}")
    return classes


def done_expression(fields: dict):
    """A ``ViewExpression``: the sample holds a complete result of a run
    writing ``fields`` (role -> name): an error, or every other field.

    A sample with a label but no crops or scores (written by an older
    version field by field, and cut short) is not done: it is redone.
    """
    written = [F(name) != None for role, name in fields.items() if role != "error"]  # noqa: E711
    complete = written[0]
    for expr in written[1:]:
        complete = complete & expr
    if "error" not in fields:  # a record without an error field (older runs)
        return complete
    return (F(fields["error"]) != None) | complete  # noqa: E711
