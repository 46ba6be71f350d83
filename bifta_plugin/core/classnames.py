"""Class-name text rules shared by the text side, description files and
LLM generation; pure Python (no torch), so forms can use them.

- :func:`wordify`: the spelling of a class name in prompts;
- :func:`dclip_sentence`: DCLIP's descriptor -> sentence rule;
- :func:`validate_classes`: a user's class list, checked;
- :func:`preview`: the first few names of a list, for messages.
"""

from __future__ import annotations

from typing import Sequence

_DCLIP_WHICH_PREFIXES = ("has", "often", "typically", "may", "can")


def wordify(name: str) -> str:
    """A class name as prompts spell it: underscores become spaces.

    The reference applies this only to description-file keys; its class
    lists already use spaces, so using it in templates and anchors too
    changes nothing there and keeps "golden_retriever" labels readable.
    """
    return name.replace("_", " ")


def dclip_sentence(class_name: str, descriptor: str) -> str:
    """DCLIP's descriptor-to-sentence rule, quirks included.

    ``"{c}, which is {d}"`` when ``d`` starts with the letter "a" (so
    "antennae ..." also gets "which is") or with "used"; ``"{c}, which {d}"``
    when it starts with has/often/typically/may/can; else
    ``"{c}, which has {d}"``. No final period (``docs/METHOD.md`` §5.4).
    """
    if descriptor.startswith("a"):
        which = f"which is {descriptor}"
    elif descriptor.startswith(_DCLIP_WHICH_PREFIXES):
        which = f"which {descriptor}"
    elif descriptor.startswith("used"):
        which = f"which is {descriptor}"
    else:
        which = f"which has {descriptor}"
    return f"{wordify(class_name)}, {which}"


def validate_classes(classes, check_prompts: bool = True) -> list[str]:
    """Check a user's class list: non-empty, strings, no duplicates, and no
    two names that normalise to the same prompt (:func:`prompt_key`).

    ``check_prompts=False`` skips the last check, for readers that report
    such names instead (description files match keys case-insensitively and
    list them under ``duplicate_classes``); a run always checks.

    Raises:
        ValueError: naming the problem.
    """
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ValueError(
            "classes must be a list of class names; got "
            f"{type(classes).__name__}"
        )
    classes = list(classes)
    if not classes:
        raise ValueError("classes is empty: give at least one class name")
    bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings; got {bad[:5]}")
    seen, dups = set(), []
    for c in classes:
        if c in seen and c not in dups:
            dups.append(c)
        seen.add(c)
    if dups:
        raise ValueError(
            f"duplicate class names {dups}: two classes with the same name "
            "get identical class vectors and the later one can never win"
        )
    if check_prompts:
        _check_same_prompt(classes)
    return classes


def prompt_key(name: str) -> str:
    """What CLIP's tokenizer sees of a class name in a prompt.

    :func:`wordify` spelling, then lower case and whitespace collapsed (the
    tokenizer's own cleaning), so "Cat", "cat " and "cat" share a key, as do
    "golden_retriever" and "golden retriever".
    """
    return " ".join(wordify(name).lower().split())


def _check_same_prompt(classes: list[str]) -> None:
    """Raise for distinct names that give identical prompts (and vectors)."""
    groups: dict[str, list[str]] = {}
    for c in classes:
        groups.setdefault(prompt_key(c), []).append(c)
    clashes = [names for names in groups.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(" / ".join(repr(n) for n in names) for names in clashes[:5])
        raise ValueError(
            f"class names that differ only in case, spaces or underscores: "
            f"{shown}. They get identical prompts (CLIP's tokenizer ignores "
            "case and extra spaces), so the later one can never win; keep one "
            "spelling of each"
        )


def preview(items, limit: int = 8) -> str:
    """``"a, b, c, ... (+N)"``: the first ``limit`` names of a list."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (
        f", ... (+{len(items) - limit})" if len(items) > limit else ""
    )
