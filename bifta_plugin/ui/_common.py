"""Form helpers shared by the BiFTA operators and panels.

Everything here runs inside ``resolve_input``, which FiftyOne calls on every
form change (``dynamic=True``) and once more at execution: it reads only the
dataset schema, the run list and small files, and never imports torch.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

import fiftyone.operators.types as types

# re-exported for the forms: one way to list a few names in a message

#: the plugin icon (fiftyone.yml folder relative)
ICON = "/assets/icon.svg"

#: suffixes of the fields a run writes next to ``label_field`` (ARCHITECTURE.md)
DERIVED_SUFFIXES = ("_crops", "_scores", "_topk", "_error")

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


# ----------------------------------------------------------------------------
# Paths: FileExplorerView in the App, plain strings from the SDK
# ----------------------------------------------------------------------------
def parse_path(value: Any) -> str | None:
    """A path param as a string: FileExplorerView gives ``{"absolute_path": ..}``,
    SDK callers give a plain string; empty values give None."""
    if isinstance(value, Mapping):
        value = value.get("absolute_path") or value.get("path")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        return None
    return os.path.expanduser(value.strip())


def path_input(
    ctx,
    inputs: types.Object,
    name: str,
    *,
    label: str,
    description: str,
    required: bool = False,
    button_label: str = "Choose a file...",
    prefer_text: bool = False,
):
    """A file-path input: a file explorer in the App, a string for SDK calls.

    FiftyOne validates a ``types.File`` value as an object, so a plain string
    from ``execute_operator`` would fail validation; when the caller already
    passed a string, the input is declared as a string instead; so it is
    with ``prefer_text`` while empty (a file that does not exist yet cannot
    be picked in the explorer, only typed). A value already chosen keeps
    its widget.

    Returns:
        the property, for validation messages.
    """
    value = ctx.params.get(name)
    if isinstance(value, str) or (value is None and prefer_text):
        return inputs.str(
            name, label=label, description=description, required=required
        )
    return inputs.file(
        name,
        label=label,
        description=description,
        required=required,
        view=types.FileExplorerView(
            choose_dir=False, button_label=button_label
        ),
    )


# ----------------------------------------------------------------------------
# Fields
# ----------------------------------------------------------------------------
def field_dropdown(
    inputs: types.Object,
    name: str,
    fields: Iterable[str],
    *,
    label: str,
    description: str,
    required: bool = False,
):
    """A dropdown enum over names (fields, run keys); None when there are none."""
    fields = list(fields)
    if not fields:
        return None
    choices = types.Dropdown(label=label, description=description)
    for path in fields:
        choices.add_choice(path, label=path)
    return inputs.enum(
        name,
        choices.values(),
        label=label,
        description=description,
        required=required,
        view=choices,
    )


def device_error(device: Any) -> str | None:
    """Why ``device`` is not a device string, or None (no torch import)."""
    if device is None or (
        isinstance(device, str) and _DEVICE.fullmatch(device.strip().lower())
    ):
        return None
    return f"'{device}' is not a device: use auto, cpu, cuda, cuda:N or mps"


def bifta_label_fields(dataset) -> dict[str, str]:
    """``{label_field: run_key}`` of the BiFTA runs on ``dataset``."""
    from ..sdk import records as runs

    out = {}
    for run_key in runs.list_bifta_runs(dataset):
        info = runs.get_bifta_run_info(dataset, run_key)
        out[info.get("label_field") or run_key] = run_key
    return out


def bifta_run_fields(dataset, run_key: str) -> list[str]:
    """The existing fields that BiFTA run ``run_key`` wrote."""
    from ..sdk import records as runs

    info = runs.get_bifta_run_info(dataset, run_key)
    schema = dataset.get_field_schema()
    return [f for f in (info.get("fields") or {}).values() if f in schema]


# ----------------------------------------------------------------------------
# Messages and small widgets
# ----------------------------------------------------------------------------
def set_invalid(prop, message: str) -> None:
    """Mark ``prop`` invalid with ``message`` (disables Execute in the App)."""
    prop.invalid = True
    prop.error_message = message


def notice(inputs: types.Object, name: str, text: str) -> None:
    inputs.view(name, types.Notice(label=text))


def warning(inputs: types.Object, name: str, text: str) -> None:
    inputs.view(name, types.Warning(label=text))


def error(inputs: types.Object, name: str, text: str) -> None:
    inputs.view(name, types.Error(label=text))


def radio(
    inputs: types.Object,
    name: str,
    options: Mapping[str, str],
    *,
    label: str,
    default: str,
    description: str | None = None,
    dropdown: bool = False,
):
    """An enum input from ``{value: label}``.

    Not ``required``: SDK callers may omit it and get ``default``.
    """
    choices = types.Dropdown() if dropdown else types.RadioGroup()
    for value, text in options.items():
        choices.add_choice(value, label=text)
    return inputs.enum(
        name,
        choices.values(),
        label=label,
        description=description,
        default=default,
        view=choices,
    )
