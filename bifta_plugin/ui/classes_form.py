"""The "Classes" part of the forms, shared by ``run_bifta`` and
``generate_descriptions``: typed names, a class-list file, or the labels of a
Classification field; and the params -> class names mapping used at execution.
"""

from __future__ import annotations

import re

import fiftyone.operators.types as types

from ..descriptions.files import load_classes
from ..sdk import rules
from ..core.classnames import preview
from . import _common as ui

CLASSES_SOURCES = {
    "list": "Type the classes",
    "file": "Classes file (.txt one per line, or a JSON/YAML list)",
    "field": "Labels of an existing Classification field",
}

#: largest class-list file the form reads (it reads it on every change)
MAX_FORM_FILE_BYTES = 1_000_000


def classes_inputs(ctx, inputs) -> list[str] | None:
    """The "Classes" inputs; returns the class names they give, or None
    while they are not valid (the form then shows why)."""
    source = ctx.params.get("classes_source") or "list"
    ui.radio(
        inputs,
        "classes_source",
        CLASSES_SOURCES,
        label="Classes",
        default="list",
        description="Where the class names come from",
    )
    if source == "file":
        return _classes_file_inputs(ctx, inputs)
    if source == "field":
        return _classes_field_inputs(ctx, inputs)
    return _classes_list_inputs(ctx, inputs)


def _classes_list_inputs(ctx, inputs) -> list[str] | None:
    value = ctx.params.get("classes")
    kwargs = dict(
        label="Class names",
        description="The classes to choose from (type a name, press Enter)",
        required=True,
    )
    if isinstance(value, str):  # an SDK caller's "a, b, c"
        prop = inputs.str("classes", **kwargs)
    else:
        prop = inputs.list(
            "classes",
            types.String(),
            view=types.AutocompleteView(
                allow_user_input=True, allow_duplicates=False
            ),
            **kwargs,
        )
    classes = split_classes(value)
    if value is not None and not classes:
        ui.set_invalid(prop, "Enter at least one class name")
        return None
    if len(set(classes)) < len(classes):
        ui.warning(inputs, "classes_dupes", "Some class names are repeated")
    if classes:  # what the chips mean once split and cleaned
        ui.notice(
            inputs,
            "classes_list_info",
            f"{len(classes)} classes: {preview(classes)}",
        )
    return classes or None


def _classes_file_inputs(ctx, inputs) -> list[str] | None:
    prop = ui.path_input(
        ctx,
        inputs,
        "classes_path",
        label="Classes file",
        description="A .txt file (one class per line) or a JSON/YAML list",
        required=True,
    )
    path = ui.parse_path(ctx.params.get("classes_path"))
    if path is None:
        return None
    try:
        classes = load_classes(path, max_bytes=MAX_FORM_FILE_BYTES)
    except (ValueError, OSError) as e:
        ui.set_invalid(prop, str(e))
        return None
    ui.notice(
        inputs,
        "classes_path_info",
        f"{len(classes)} classes: {preview(classes)}",
    )
    return classes


def _classes_field_inputs(ctx, inputs) -> list[str] | None:
    fields = rules.classification_fields(ctx.dataset)
    prop = ui.field_dropdown(
        inputs,
        "classes_field",
        fields,
        label="Classes field",
        description="Classify into the labels this field has anywhere in "
        "the dataset",
        required=True,
    )
    if prop is None:
        ui.error(
            inputs,
            "classes_field_none",
            "This dataset has no Classification field: type the classes or "
            "choose a file instead",
        )
        ui.set_invalid(inputs.get_property("classes_source"), "No field")
        return None
    field = ctx.params.get("classes_field")
    if field not in fields:
        return None
    try:
        classes = rules.field_classes(ctx.dataset, field)
    except ValueError as e:
        ui.set_invalid(prop, str(e))
        return None
    ui.notice(
        inputs,
        "classes_field_info",
        f"{len(classes)} classes: {preview(classes)}",
    )
    return classes


# ----------------------------------------------------------------------------
# params -> classes
# ----------------------------------------------------------------------------
def classes_kwargs(params: dict) -> dict:
    source = params.get("classes_source") or "list"
    if source == "field":
        field = params.get("classes_field")
        if not field:
            raise ValueError("classes_source is 'field' but no classes_field")
        return {"classes_field": field}
    if source == "file":
        path = ui.parse_path(params.get("classes_path"))
        if path is None:
            raise ValueError("classes_source is 'file' but no classes_path")
        return {"classes": load_classes(path, max_bytes=MAX_FORM_FILE_BYTES)}
    classes = split_classes(params.get("classes"))
    if not classes:
        raise ValueError("no classes given")
    return {"classes": classes}


def split_classes(value) -> list[str]:
    """Class names from a list or a string; every item is split on commas
    and newlines (a pasted "Coat, Dress, Shirt" chip is three classes) and
    blank names are dropped."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    names = []
    for item in items:
        names += re.split(r"[,\n]", str(item))
    return [n.strip() for n in names if n.strip()]


def resolve_classes(collection, params: dict) -> list[str]:
    """The class names the params select, exactly as ``run_bifta`` resolves
    them (a field's distinct labels over the dataset, sorted:
    :func:`~bifta_plugin.sdk.rules.field_classes`).

    Raises:
        ValueError: no classes, an unreadable file, a field without labels.
    """
    kwargs = classes_kwargs(params)
    if "classes_field" not in kwargs:
        return kwargs["classes"]
    return rules.field_classes(collection, kwargs["classes_field"])


def classes_source(classes, classes_path, classes_field) -> str:
    given = [
        name
        for name, value in (
            ("list", classes),
            ("file", classes_path),
            ("field", classes_field),
        )
        if value
    ]
    if len(given) > 1:
        raise ValueError(
            "pass only one of classes, classes_path and classes_field"
        )
    if not given:
        raise ValueError("pass classes, classes_path or classes_field")
    return given[0]
