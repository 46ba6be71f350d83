"""Class descriptions: load, validate, match to class names, report, save.

The description methods (``descriptions``, ``wca``, ``bifta``) need a list of
texts per class. This module turns a file (or an in-memory object) into a
:class:`DescriptionSet` keyed by the exact class names of the run, and says
what it did on the way: which classes got nothing, which file keys matched no
class, which keys were merged, how many exact duplicates there are.

Formats (``docs/METHOD.md`` §5.1, §5.4, §5.5):

- ``"cupl"``: an object ``{class: [sentences]}``; sentences are used
  verbatim (WCA / CuPL files, and what :mod:`.generation` writes);
- ``"dclip"``: the same shape, but the values are short descriptors
  ("has webbed feet") turned into sentences with DCLIP's rule
  (:func:`bifta_plugin.core.classnames.dclip_sentence`);
- ``"templates"``: a list of templates with one ``"{}"`` each (CLIP-E style);
  every class gets every template filled with its name;
- ``"auto"``: a list means templates, an object means cupl. DCLIP files have
  exactly the shape of cupl files, so nothing in a file can tell them apart:
  ask for ``"dclip"`` explicitly.

Files: ``.json``, ``.yaml``/``.yml`` (either format), ``.txt`` (templates,
one per line; blank lines and lines starting with ``#`` are skipped).

Matching is case- and underscore-insensitive (:func:`normalize_name`), which
covers the reference's ``wordify`` lookup ("apple_pie" finds "apple pie").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import yaml

from ..core.classnames import dclip_sentence, validate_classes, wordify
from ..core.defaults import DESCRIPTIONS_FORMATS

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".meta.json"
_EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".txt": "txt"}

DescriptionSource = Union[str, "os.PathLike[str]", Mapping[str, Any], Sequence[str]]


# ----------------------------------------------------------------------------
# Public data types
# ----------------------------------------------------------------------------
@dataclass
class MatchReport:
    """What loading did with the file's keys and texts.

    Attributes:
        missing: classes that got no description (no matching key, or only
            empty entries), in class order.
        unmatched_keys: file keys that match no class, in file order.
        merged_keys: ``{class: [file keys]}`` where several keys normalise to
            the class's name; their lists were concatenated in file order.
        counts: texts per class (0 for missing classes), after ``dedupe``.
        duplicates: ``{class: n}`` exact duplicates per class beyond the first
            occurrence, compared after lower-casing and collapsing whitespace
            (what CLIP's tokenizer does, so such pairs have cosine 1.0).
            Counted before ``dedupe``; only classes with duplicates appear.
        deduped: whether those duplicates were dropped.
        empty_dropped: empty or whitespace-only entries dropped.
        duplicate_classes: class names given more than once, or spelled
            differently but normalising to an earlier class's name. They
            share one description list, hence one class vector, so the
            later one can never win the argmax (Places365 repeats 19 names).
        truncated: texts longer than the encoder's context, or None until a
            caller with an encoder runs :meth:`DescriptionSet.with_lengths_checked`.
        context_length: that context in tokens (the encoder's own, e.g. 77
            for OpenAI CLIP), or None when unknown.
    """

    missing: list = field(default_factory=list)
    unmatched_keys: list = field(default_factory=list)
    merged_keys: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    duplicates: dict = field(default_factory=dict)
    deduped: bool = False
    empty_dropped: int = 0
    duplicate_classes: list = field(default_factory=list)
    truncated: int | None = None
    context_length: int | None = None

    @property
    def total(self) -> int:
        """Texts over all classes."""
        return sum(self.counts.values())

    @property
    def total_duplicates(self) -> int:
        """Exact duplicates over all classes."""
        return sum(self.duplicates.values())

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class DescriptionSet:
    """Descriptions keyed by the exact class names of a run, plus provenance.

    A value: its attributes are never reassigned, and the operations that
    add to it (:meth:`with_lengths_checked`, generation's provenance) return
    a new set (``dataclasses.replace``), so a set passed to several runs
    reads the same in each.

    Attributes:
        descriptions: ``{class name: [texts]}`` in class order; classes
            without descriptions are absent (see :meth:`missing_classes`).
        classes: the class names asked for (duplicates removed), in order.
        source: the file's absolute path, ``"inline"``, or ``"generated:<model>"``.
        format: the format actually used (never ``"auto"``).
        sha256: hash of the canonical JSON of ``descriptions`` (sorted keys,
            list order kept since BiFTA's refinement depends on it).
        report: a :class:`MatchReport`.
        file_sha256: SHA-256 of the file's bytes (what ``sha256sum`` prints),
            or None for in-memory descriptions.
        provenance: ``source``, ``format``, ``sha256``, plus ``generation``
            (the sidecar written by :mod:`.generation`) when there is one.
    """

    descriptions: dict
    classes: list
    source: str
    format: str
    sha256: str
    report: MatchReport
    provenance: dict = field(default_factory=dict)
    file_sha256: str | None = None

    def missing_classes(self) -> list[str]:
        """Classes that have no descriptions, in class order."""
        return list(self.report.missing)

    def require_complete(self) -> "DescriptionSet":
        """Raise unless every class has at least one description.

        Returns:
            self, so calls can be chained.

        Raises:
            ValueError: listing the classes without descriptions.
        """
        missing = self.report.missing
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            hint = ""
            if self.report.unmatched_keys:
                keys = ", ".join(repr(k) for k in self.report.unmatched_keys[:5])
                hint = f" (file keys that matched no class: {keys})"
            raise ValueError(
                f"{len(missing)} class(es) have no descriptions in "
                f"{self.source}: {shown}{more}{hint}"
            )
        return self

    def with_lengths_checked(
        self, count_truncated: Callable[[list], int], context_length: int | None = None
    ) -> "DescriptionSet":
        """This set with the texts the tokenizer will truncate counted in
        its report (``report.truncated``, and ``report.context_length``).

        Args:
            count_truncated: ``list[str] -> int``, e.g. the encoder's
                ``count_truncated`` (texts over CLIP's 77-token context are
                cut at encode time, silently, as in the reference).
            context_length: the encoder's context in tokens, for the report.

        Returns:
            A new :class:`DescriptionSet` (this one is unchanged).
        """
        texts = [t for group in self.descriptions.values() for t in group]
        truncated = int(count_truncated(texts)) if texts else 0
        report = replace(self.report, truncated=truncated, context_length=context_length)
        return replace(self, report=report)

    def summary(self) -> str:
        """A human-readable multi-line report."""
        return "\n".join(_summary_lines(self))

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field."""
        return dict(
            descriptions={c: list(t) for c, t in self.descriptions.items()},
            classes=list(self.classes),
            source=self.source,
            format=self.format,
            sha256=self.sha256,
            file_sha256=self.file_sha256,
            report=self.report.to_dict(),
            provenance=dict(self.provenance),
        )


# ----------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------
def normalize_name(name: str) -> str:
    """The matching key of a class name or file key.

    Lower-case, ``"_"`` to space, whitespace collapsed and stripped: "Apple_Pie"
    and "apple  pie" both become "apple pie".
    """
    return " ".join(name.lower().replace("_", " ").split())


def load_descriptions(
    source: DescriptionSource,
    classes: Sequence[str] | None = None,
    *,
    format: str = "auto",
    dedupe: bool = False,
) -> DescriptionSet:
    """Load class descriptions and match them to ``classes``.

    Args:
        source: a path (``.json``, ``.yaml``/``.yml``, ``.txt``), or an
            in-memory ``{class: [texts]}`` mapping or list of templates.
        classes: the class names of the run. The result is keyed by these
            exact names; file keys match them case- and
            underscore-insensitively. None means the file's keys, in order
            (not allowed for templates, which have no keys).
        format: ``"auto"``, ``"cupl"``, ``"dclip"`` or ``"templates"`` (see
            the module docstring). ``"auto"`` never picks ``"dclip"``: its
            files look exactly like cupl files.
        dedupe: drop exact duplicates (after lower-casing and collapsing
            whitespace), keeping the first. Off by default because the
            reference keeps them: a duplicate counts twice in WCA's weights.
            BiFTA's refinement removes them anyway.

    Returns:
        A :class:`DescriptionSet`. Classes without descriptions are reported,
        not raised: call :meth:`DescriptionSet.require_complete` to insist.

    Raises:
        ValueError: unknown format or extension, malformed file (naming the
            file and line/column, or the key), wrong shape for the format,
            non-string entries, bad templates, bad classes.
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    if format not in DESCRIPTIONS_FORMATS:
        raise ValueError(
            f"unknown descriptions format {format!r}; expected one of {list(DESCRIPTIONS_FORMATS)}"
        )
    data, where, path = _read_source(source, format)
    kind, items = _top_level(data, where)
    fmt = _resolve_format(format, kind, where)
    if fmt == "templates":
        if classes is None:
            raise ValueError(
                f"{where}: a templates file has no class names; pass classes"
            )
        unique, dup_classes = _check_classes(classes)
        texts, empty = _template_texts(items, unique, where)
        report = MatchReport(empty_dropped=empty, duplicate_classes=dup_classes)
    else:
        groups, empty = _group_entries(items, where)
        if classes is None:
            classes = [keys[0] for keys, _ in groups.values()]
            if not classes:
                raise ValueError(f"{where}: the file has no classes (empty object)")
        unique, dup_classes = _check_classes(classes)
        texts, report = _match(groups, unique, fmt)
        report.empty_dropped = empty
        report.duplicate_classes = dup_classes
    result = _finish(texts, unique, report, fmt, where, path, dedupe)
    if path is not None:
        result = _with_generation(result, path, items if kind == "object" else None)
    return result


def load_classes(
    source: Union[str, "os.PathLike[str]", Sequence[str]],
    max_bytes: int | None = None,
) -> list[str]:
    """Read a class list: a JSON or YAML list, or a ``.txt`` file, one per line.

    The one class-list reader of the SDK, the CLI and the forms. Names are
    stripped; blank lines and ``#`` comments are skipped in ``.txt`` files.
    Duplicates are kept (class lists are in label order, and some real ones,
    like Places365's, repeat names; :func:`validate_classes` refuses them
    for a run).

    Args:
        source: a file path, or a list of names (checked the same way).
        max_bytes: refuse larger files (the forms read files on every
            change); None = no limit.

    Raises:
        FileNotFoundError: no such file.
        ValueError: too large, unknown file type, malformed file, not a
            list, or non-string / empty names.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file() and max_bytes is not None and path.stat().st_size > max_bytes:
            raise ValueError(f"class list file {path} is larger than {max_bytes // 1000} kB")
        text = _read_text(path, "class list")
        kind = _EXTENSIONS.get(path.suffix.lower())
        if kind is None:
            raise ValueError(
                f"{path}: unknown class list file type {path.suffix!r}; expected "
                ".txt (one name per line), .json, .yaml or .yml (a list)"
            )
        if kind == "txt":
            data = [line for line in text.splitlines() if not line.strip().startswith("#")]
            data = [c for c in data if c.strip()]
        else:
            data = _parse(text, kind, str(path))
        where = str(path)
    else:
        data, where = source, "classes"
    if isinstance(data, (str, _Pairs)) or not isinstance(data, (list, tuple)):
        raise ValueError(f"{where}: a class list must be a list of names")
    names = list(data)
    bad = [c for c in names if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"{where}: class names must be non-empty strings; got {bad[:5]}")
    if not names:
        raise ValueError(f"{where}: the class list is empty")
    return [c.strip() for c in names]


def read_mapping(path: Union[str, "os.PathLike[str]"]) -> dict[str, list[str]]:
    """A ``{class: [texts]}`` file exactly as written, after validating it.

    No matching, no dropping of blank entries: keys, spelling and order are
    the file's (a repeated key's lists are concatenated). This is what
    :mod:`.generation` extends without touching existing entries.

    Raises:
        ValueError: malformed file, or not ``{str: [str]}`` (naming the key).
        FileNotFoundError: no such file.
    """
    data, where, _ = _read_source(path, "cupl")
    kind, pairs = _top_level(data, where)
    _resolve_format("cupl", kind, where)
    _group_entries(pairs, where)  # validation only
    return _raw_mapping(pairs)


def _raw_mapping(pairs: list) -> dict[str, list[str]]:
    """Validated pairs as a dict; a repeated key's lists are concatenated."""
    mapping: dict[str, list[str]] = {}
    for key, value in pairs:
        mapping.setdefault(key, []).extend(value)
    return mapping


def save_descriptions(
    mapping: Union[Mapping[str, Sequence[str]], DescriptionSet],
    path: Union[str, "os.PathLike[str]"],
) -> Path:
    """Write ``{class: [texts]}`` as pretty UTF-8 JSON, atomically.

    The file is written next to its destination and moved into place with
    ``os.replace``, so a reader (or an interrupted run) never sees half a
    file.

    Args:
        mapping: the descriptions, or a :class:`DescriptionSet`.
        path: destination; must end with ``.json``.

    Returns:
        The path written.

    Raises:
        ValueError: not a ``.json`` path, or a mapping that is not
            ``{str: [str]}``.
    """
    if isinstance(mapping, DescriptionSet):
        mapping = mapping.descriptions
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ValueError(f"descriptions are saved as JSON: {path} must end with .json")
    clean = {}
    for key, texts in mapping.items():
        if not isinstance(key, str):
            raise ValueError(f"class names must be strings; got {key!r}")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"descriptions of {key!r} must be a list of strings")
        clean[key] = list(texts)
    write_json_atomic(path, clean)
    return path


def write_json_atomic(path: Union[str, "os.PathLike[str]"], obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON via a temp file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave a stray temp file behind, whatever interrupted us.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def sidecar_path(path: Union[str, "os.PathLike[str]"]) -> Path:
    """Where the provenance of a generated file lives: ``<path>.meta.json``."""
    return Path(str(path) + SIDECAR_SUFFIX)


def mapping_sha256(mapping: Mapping[str, Sequence[str]]) -> str:
    """Stable hash of ``{class: [texts]}``: canonical JSON, sorted keys.

    List order is part of the hash: BiFTA's greedy refinement depends on it.
    """
    canonical = json.dumps(
        {k: list(v) for k, v in mapping.items()},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------
# Reading and parsing
# ----------------------------------------------------------------------------
class _Pairs(list):
    """A JSON/YAML object as its ``(key, value)`` pairs, in file order.

    Parsing into pairs instead of a dict keeps repeated keys (a dict would
    silently keep only the last one); they are merged and reported like
    keys that differ only in case.
    """


class _PairsLoader(yaml.SafeLoader):
    """SafeLoader that builds mappings as :class:`_Pairs`."""


def _construct_pairs(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Pairs:
    loader.flatten_mapping(node)
    return _Pairs(
        (loader.construct_object(k, deep=True), loader.construct_object(v, deep=True))
        for k, v in node.value
    )


_PairsLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_pairs
)


def _read_source(source: DescriptionSource, format: str) -> tuple[Any, str, Path | None]:
    """Return ``(parsed data, name for messages, path or None)``."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        kind = _file_kind(path)
        text = _read_text(path)
        if kind == "txt":
            if format not in ("auto", "templates"):
                raise ValueError(
                    f"{path}: a .txt file holds templates (one per line); "
                    f"format {format!r} needs a .json or .yaml file"
                )
            return _txt_templates(text), str(path), path
        return _parse(text, kind, str(path)), str(path), path
    if isinstance(source, Mapping):
        return _Pairs(source.items()), "inline descriptions", None
    if isinstance(source, (list, tuple)):
        return list(source), "inline descriptions", None
    raise ValueError(
        "descriptions source must be a file path, a {class: [texts]} mapping "
        f"or a list of templates; got {type(source).__name__}"
    )


def _file_kind(path: Path) -> str:
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unknown descriptions file type {path.suffix!r}; expected "
            ".json, .yaml, .yml or .txt (templates)"
        )
    return kind


def _read_text(path: Path, what: str = "descriptions") -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        # utf-8-sig: tolerate the BOM some Windows editors write.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    return text


def _parse(text: str, kind: str, where: str) -> Any:
    """Parse JSON or YAML, turning parser errors into file:line:column errors."""
    if kind == "json":
        try:
            return json.loads(text, object_pairs_hook=_Pairs)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            ) from None
    try:
        data = yaml.load(text, Loader=_PairsLoader)  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: invalid YAML{at}: {problem}") from None
    if data is None:
        raise ValueError(f"{where}: the file is empty (no YAML content)")
    return data


def _txt_templates(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _top_level(data: Any, where: str) -> tuple[str, list]:
    """Classify parsed data as ``("object", pairs)`` or ``("list", items)``."""
    if isinstance(data, _Pairs):
        return "object", list(data)
    if isinstance(data, list):
        return "list", data
    raise ValueError(
        f"{where}: top level must be an object ({{class: [texts]}}) or a list "
        f"(templates); got {type(data).__name__}"
    )


def _resolve_format(format: str, kind: str, where: str) -> str:
    if format == "auto":
        return "templates" if kind == "list" else "cupl"
    if format == "templates" and kind != "list":
        raise ValueError(
            f"{where}: format 'templates' needs a list of templates with one "
            "'{}' each; got an object (use format 'cupl' or 'dclip' for "
            "{class: [texts]})"
        )
    if format in ("cupl", "dclip") and kind != "object":
        raise ValueError(
            f"{where}: format {format!r} needs an object {{class: [texts]}}; "
            "got a list (a list of templates is format 'templates')"
        )
    return format


# ----------------------------------------------------------------------------
# Validation and matching
# ----------------------------------------------------------------------------
def _check_classes(classes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Validate class names, allowing repeats; return ``(unique, repeated)``.

    Repeats are allowed because real class lists have them (Places365,
    ImageNet); they share one description list and are reported.
    """
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        validate_classes(classes)  # raises its "must be a list" error
    classes = list(classes)
    hashable = all(isinstance(c, str) for c in classes)
    # spellings of one name are reported below, not refused: runs refuse them
    validate_classes(list(dict.fromkeys(classes)) if hashable else classes, check_prompts=False)
    unique, repeated, seen = [], [], set()
    for name in classes:
        key = normalize_name(name)
        if key in seen:
            if name not in repeated:
                repeated.append(name)
            if name not in unique:
                unique.append(name)  # spelled differently: still its own key
            continue
        seen.add(key)
        unique.append(name)
    if repeated:
        logger.warning(
            "%d class name(s) repeat an earlier one (ignoring case and "
            "underscores), e.g. %r; they get identical descriptions",
            len(repeated),
            repeated[0],
        )
    return unique, repeated


def _string_entries(key: str, value: Any, where: str) -> tuple[list[str], int]:
    """Check one key's value is a list of strings; drop blank ones."""
    if isinstance(value, str):
        raise ValueError(
            f"{where}: the value of key {key!r} must be a list of strings; got "
            "a single string (wrap it in [...])"
        )
    if not isinstance(value, (list, tuple)):
        kind = "an object" if isinstance(value, (_Pairs, Mapping)) else type(value).__name__
        raise ValueError(
            f"{where}: the value of key {key!r} must be a list of strings; got {kind}"
        )
    kept, empty = [], 0
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            raise ValueError(
                f"{where}: key {key!r}, entry {i}: expected a string, got "
                f"{type(entry).__name__} {entry!r}"
            )
        if entry.strip():
            kept.append(entry)
        else:
            empty += 1
    return kept, empty


def _group_entries(pairs: list, where: str) -> tuple[dict, int]:
    """``{normalised key: ([file keys], [texts])}`` in file order; blanks counted."""
    groups: dict[str, tuple[list, list]] = {}
    empty = 0
    for key, value in pairs:
        if not isinstance(key, str) or not key.strip():
            raise ValueError(
                f"{where}: key {key!r} is not a non-empty string (in YAML, "
                "quote keys like yes, no, null or numbers)"
            )
        texts, dropped = _string_entries(key, value, where)
        empty += dropped
        keys, merged = groups.setdefault(normalize_name(key), ([], []))
        keys.append(key)
        merged.extend(texts)
    return groups, empty


def _match(groups: dict, classes: list[str], fmt: str) -> tuple[dict, MatchReport]:
    """Texts per class (exact class names) and the matching report."""
    texts: dict[str, list[str]] = {}
    report = MatchReport()
    used = set()
    for name in classes:
        key = normalize_name(name)
        keys, raw = groups.get(key, ([], []))
        if not raw:
            report.missing.append(name)
            if keys:
                used.add(key)
            continue
        used.add(key)
        if len(keys) > 1:
            report.merged_keys[name] = list(keys)
        if fmt == "dclip":
            texts[name] = [dclip_sentence(name, d) for d in raw]
        else:
            texts[name] = list(raw)
    report.unmatched_keys = [
        k for key, (keys, _) in groups.items() if key not in used for k in keys
    ]
    if report.merged_keys:
        logger.info("merged file keys that differ only in case/underscores: %s", report.merged_keys)
    return texts, report


def _check_template(template: str, where: str, index: int) -> None:
    """Exactly one replacement field, and it must be the bare ``{}``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        fields = [f"<{e}>"]
    if fields != [""]:
        raise ValueError(
            f"{where}: template {index} must contain exactly one '{{}}' for the "
            f"class name (use '{{{{' / '}}}}' for literal braces); got {template!r}"
        )


def _template_texts(items: list, classes: list[str], where: str) -> tuple[dict, int]:
    templates, empty = _string_entries("<templates>", items, where)
    if not templates:
        raise ValueError(f"{where}: no templates (the list is empty)")
    for i, template in enumerate(templates):
        _check_template(template, where, i)
    # Texts are natural language, so the class name reads as words there,
    # as in DCLIP's sentences ("apple_pie" -> "apple pie").
    return {c: [t.format(wordify(c)) for t in templates] for c in classes}, empty


def _text_key(text: str) -> str:
    """Equality as CLIP's tokenizer sees it: lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def _count_and_dedupe(texts: dict, report: MatchReport, dedupe: bool) -> dict:
    """Count exact duplicates per class; drop them (keeping the first) if asked."""
    for name, group in list(texts.items()):
        firsts: dict[str, str] = {}
        for t in group:
            firsts.setdefault(_text_key(t), t)
        extra = len(group) - len(firsts)
        if extra:
            report.duplicates[name] = extra
            if dedupe:
                texts[name] = list(firsts.values())  # dicts keep first-seen order
    report.deduped = dedupe
    return texts


def _finish(
    texts: dict,
    classes: list[str],
    report: MatchReport,
    fmt: str,
    where: str,
    path: Path | None,
    dedupe: bool,
) -> DescriptionSet:
    texts = _count_and_dedupe(texts, report, dedupe)
    report.counts = {c: len(texts.get(c, ())) for c in classes}
    descriptions = {c: texts[c] for c in classes if texts.get(c)}
    sha = mapping_sha256(descriptions)
    source = os.path.abspath(path) if path is not None else "inline"
    provenance = dict(source=source, format=fmt, sha256=sha)
    if report.missing:
        logger.warning(
            "%d of %d classes have no descriptions in %s", len(report.missing), len(classes), where
        )
    return DescriptionSet(
        descriptions=descriptions,
        classes=list(classes),
        source=source,
        format=fmt,
        sha256=sha,
        report=report,
        provenance=provenance,
        file_sha256=None if path is None else hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def _with_generation(result: DescriptionSet, path: Path, pairs: list | None) -> DescriptionSet:
    """``result`` with the sidecar's generation record in its provenance, if
    there is one.

    The sidecar stores the hash of the whole file as generated; a different
    hash now means someone edited the file, so the record may not describe it.
    """
    generation = _read_sidecar(path)
    if generation is None:
        return result
    provenance = dict(result.provenance, generation=generation)
    recorded = generation.get("sha256")
    if pairs is not None and recorded and recorded != mapping_sha256(_raw_mapping(pairs)):
        provenance["modified_since_generation"] = True
        logger.warning(
            "%s changed since it was generated (its sha256 differs from the one "
            "in %s)", path, sidecar_path(path).name,
        )
    return replace(result, provenance=provenance)


def _read_sidecar(path: Path) -> dict | None:
    """The generation record next to ``path``, if any.

    A broken sidecar only costs the provenance, never the load.
    """
    meta = sidecar_path(path)
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable provenance file %s: %s", meta, e)
        return None
    if not isinstance(data, dict):
        logger.warning("ignoring provenance file %s: not a JSON object", meta)
        return None
    return data


# ----------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------
def refinement_summary(kept: Sequence[Mapping], limit: int = 5) -> str:
    """One line on what description refinement did, from a run's
    ``descriptions_kept`` (``[{label, candidates, kept}]`` per class).

    E.g. "descriptions kept: 412 of 500 (per class min 3, median 9, max 10);
    most reduced: 'tabby cat' 50 -> 3, ...". Empty when nothing was dropped
    is still reported ("all 500 kept"), so a threshold that did nothing shows.
    """
    if not kept:
        return ""
    total = sum(int(k["candidates"]) for k in kept)
    left = sum(int(k["kept"]) for k in kept)
    if left == total:
        return f"descriptions kept: all {total} ({len(kept)} classes)"
    counts = sorted(int(k["kept"]) for k in kept)
    median = counts[len(counts) // 2]
    reduced = sorted(kept, key=lambda k: int(k["kept"]) - int(k["candidates"]))
    worst = [
        f"{k['label']!r} {k['candidates']} -> {k['kept']}"
        for k in reduced[:limit]
        if int(k["kept"]) < int(k["candidates"])
    ]
    return (
        f"descriptions kept: {left} of {total} (per class min {counts[0]}, "
        f"median {median}, max {counts[-1]}); most reduced: {', '.join(worst)}"
    )


def _names(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _summary_lines(ds: DescriptionSet) -> list[str]:
    r = ds.report
    counts = [n for n in r.counts.values() if n]
    lines = [
        f"Descriptions: {len(ds.descriptions)}/{len(ds.classes)} classes from "
        f"{ds.source} (format {ds.format}, sha256 {(ds.file_sha256 or ds.sha256)[:12]})"
    ]
    if counts:
        lines.append(
            f"  {r.total} texts, {min(counts)}-{max(counts)} per class "
            f"(mean {r.total / len(counts):.1f})"
        )
    if r.duplicates:
        fate = "dropped (dedupe)" if r.deduped else (
            "kept: each counts again in WCA's weights; BiFTA's refinement removes them"
        )
        lines.append(
            f"  {r.total_duplicates} exact duplicates in {len(r.duplicates)} "
            f"classes, {fate}"
        )
    if r.missing:
        lines.append(f"  MISSING descriptions for {len(r.missing)} classes: {_names(r.missing)}")
    if r.unmatched_keys:
        lines.append(
            f"  {len(r.unmatched_keys)} file keys match no class: {_names(r.unmatched_keys)}"
        )
    for name, keys in list(r.merged_keys.items())[:8]:
        lines.append(f"  merged keys {_names(keys)} into {name!r}")
    if r.duplicate_classes:
        lines.append(
            f"  {len(r.duplicate_classes)} repeated class names share descriptions: "
            f"{_names(r.duplicate_classes)}"
        )
    if r.empty_dropped:
        lines.append(f"  dropped {r.empty_dropped} empty entries")
    if r.truncated:
        lines.append(
            f"  {r.truncated} texts exceed the text encoder's context"
            f"{'' if r.context_length is None else f' ({r.context_length} tokens)'}"
            " and are truncated when encoded"
        )
    generation = ds.provenance.get("generation")
    if generation:
        lines.append(
            f"  generated by {generation.get('model')} at {generation.get('base_url')} "
            f"on {generation.get('date')}"
        )
    return lines
