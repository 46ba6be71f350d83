"""Write class descriptions with an LLM, CuPL style, through any
OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies,
vLLM, llama.cpp server, Ollama, LM Studio...).

For each class, a handful of question prompts ("Describe what a {} looks
like", ...) are each sampled ``samples_per_prompt`` times at a high
temperature, as CuPL did; replies are cleaned into one sentence per line
(:func:`clean_reply`) and saved as a ``{class: [sentences]}`` JSON file that
:func:`bifta_plugin.descriptions.load_descriptions` reads as format
``"cupl"``.

The output file is also the cache: classes already in it are never asked
for again, and it is rewritten (atomically) after every class, so an
interrupted run resumes where it stopped. The generation settings go to a
sidecar ``<output>.meta.json`` that ``load_descriptions`` reports later.

The HTTP side (endpoint resolution, retries, errors) is
:mod:`bifta_plugin.llm_client`; the API key never leaves it except in the
``Authorization`` header.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from ..core.classnames import preview, wordify
from ..core.progress import DONE, ProgressEvent, drain
from .files import (
    DescriptionSet,
    _check_classes,
    _check_template,
    _text_key,
    load_descriptions,
    mapping_sha256,
    normalize_name,
    read_mapping,
    save_descriptions,
    sidecar_path,
    write_json_atomic,
)
from .llm_client import (
    DEFAULT_MAX_TOKENS,
    ChatEndpoint,
    GenerationError,
    resolve_endpoint,
)

logger = logging.getLogger(__name__)


# Our own CuPL-spirit question set: several phrasings give the varied
# sentences that make a description ensemble work (CuPL, section 3).
DEFAULT_PROMPTS = (
    "Describe what a {} looks like.",
    "How can you identify a {}?",
    "What does a {} look like? Describe it in a sentence.",
    "Describe an image from the internet of a {}.",
    "A caption of an image of a {}:",
)
DEFAULT_SYSTEM_PROMPT = (
    "You write short visual descriptions for an image classifier. Answer with "
    "one or two plain sentences about what can be seen: no lists, no "
    "markdown, no preamble."
)
DEFAULT_SAMPLES_PER_PROMPT = 10  # 5 prompts x 10 = 50, BiFTA's cap K


# ----------------------------------------------------------------------------
# Cleaning replies
# ----------------------------------------------------------------------------
_IMAGE_TAG = re.compile(r"\[\s*image[^\]]*\]", re.IGNORECASE)
_BOLD_LINE = re.compile(r"(?:[-*+]\s+)?\*\*([^*]+)\*\*:?")
_BULLET = re.compile(r"^(?:[-*+\u2022\u2013]|\(?\d{1,3}[.)]|\(?[a-z]\))\s+")
_LABEL = re.compile(
    r"^(?:caption|description|answer|sentence|image)\s*\d*\s*:\s*", re.IGNORECASE
)
_EMPHASIS = re.compile(r"\*+|__|`+")
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|here (?:is|are)|i hope|let me know|"
    r"as an ai|i'm sorry|i am sorry)\b",
    re.IGNORECASE,
)
_SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)]))\s+(?=[\"'\u201c\u2018(]?[A-Z0-9])"
)
_ABBREVIATIONS = {"st.", "mt.", "mr.", "mrs.", "ms.", "dr.", "jr.", "sr.", "no.",
                  "vs.", "e.g.", "i.e.", "approx.", "ft.", "u.s."}
_QUOTED = re.compile(r"^[\"'\u201c\u2018](.+?)[\"'\u201d\u2019]([.!]?)$")
_PERIOD_ENDINGS = (".", ".\"", ".'", ".\u201d", ".\u2019", ".)")


def clean_reply(text: str) -> list[str]:
    """Turn one LLM reply into clean description sentences, one per item.

    Drops markdown headings and bold-only label lines ("**Appearance**");
    strips bullets, numbering, ``**bold**``, labels like "Caption:",
    surrounding quotes and "[Image of ...]" artefacts; splits multi-line and
    multi-sentence replies; drops chatter ("Sure! Here are..."), lines
    ending in ":" or "?", and fragments under three words; ends each
    sentence with a period. Duplicates are removed by the caller, across all
    replies of a class (:func:`generate_descriptions` does it
    case-insensitively).
    """
    sentences = []
    for line in text.splitlines():
        if _is_heading(line):
            continue
        line = _clean_line(line)
        if not line or line.endswith(":"):
            continue  # blank, or a header / preamble ("Here are five:")
        for sentence in _split_sentences(line):
            sentence = _finish_sentence(sentence)
            if sentence:
                sentences.append(sentence)
    return sentences


def _is_heading(line: str) -> bool:
    """A markdown heading, or a whole-line bold label ("**Appearance**")."""
    line = line.strip()
    bold = _BOLD_LINE.fullmatch(line)
    return line.startswith("#") or bool(bold and not bold.group(1).rstrip().endswith("."))


def _clean_line(line: str) -> str:
    line = _IMAGE_TAG.sub(" ", line).strip()
    line = _EMPHASIS.sub("", line).strip()
    previous = None
    while previous != line:  # nested markers: "- 1) ...", "- a) ..."
        previous, line = line, _LABEL.sub("", _BULLET.sub("", line))
    return " ".join(line.split())


def _split_sentences(line: str) -> list[str]:
    pieces = _SENTENCE_BREAK.split(line)
    sentences = []
    for piece in pieces:
        last_word = sentences[-1].rsplit(" ", 1)[-1].lower() if sentences else ""
        # "St. Bernard", "J. Smith": a period that ends no sentence.
        if last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]\.", last_word):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _finish_sentence(sentence: str) -> str | None:
    sentence = sentence.strip()
    quoted = _QUOTED.match(sentence)
    if quoted and not re.search(r"[\"\u201c\u201d]", quoted.group(1)):
        sentence = quoted.group(1).strip() + quoted.group(2)
    sentence = sentence.rstrip(" ,;-\u2013\u2014")
    if sentence.endswith("?") or _CHATTER.match(sentence):
        return None  # a question back to the user, or small talk
    if len(re.findall(r"[^\W\d_]+", sentence)) < 3:
        return None  # too short to describe anything
    if sentence.endswith("!"):
        sentence = sentence[:-1] + "."
    if not sentence.endswith(_PERIOD_ENDINGS):
        sentence += "."
    return sentence


def _unique_lines(lines: list[str]) -> list[str]:
    """Drop repeats, ignoring case and whitespace, keeping first occurrences."""
    first: dict[str, str] = {}
    for line in lines:
        first.setdefault(_text_key(line), line)
    return list(first.values())


# ----------------------------------------------------------------------------
# Prompts and sampling
# ----------------------------------------------------------------------------
def fill_prompt(prompt: str, class_name: str, prompt_context: str | None = None) -> str:
    """Fill a ``{}`` prompt with the class name (and an optional hint).

    "Describe what a {} looks like." with "apple_pie" and "a type of food"
    gives "Describe what an apple pie, a type of food, looks like." The name
    is wordified; "a {}" becomes "an {}" before a vowel.
    """
    name = wordify(class_name).strip()
    if prompt_context:
        after = prompt.split("{}", 1)[1]
        # Mid-sentence the hint needs a closing comma; before "?"/":" it doesn't.
        name = f"{name}, {prompt_context.strip()}" + ("," if after[:1] == " " else "")
    if name[:1].lower() in "aeiou":
        prompt = re.sub(r"\b([Aa]) \{\}", r"\1n {}", prompt)
    return prompt.replace("{}", name, 1)


class _Cancelled(Exception):
    """A task skipped because another one already failed."""


class _Sampler:
    """Draws ``n`` replies per prompt, shared by the worker threads."""

    def __init__(
        self,
        endpoint: ChatEndpoint,
        *,
        system_prompt: str | None,
        n: int,
        temperature: float,
        max_tokens: int,
    ):
        self.endpoint = endpoint
        self.system_prompt = system_prompt
        self.n = n
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.requests = 0
        self._lock = threading.Lock()
        self._n_ignored = threading.Event()
        self._failed = threading.Event()

    def sample(self, prompt: str) -> list[str]:
        """``n`` reply texts for ``prompt``; after any failure, none at all."""
        if self._failed.is_set():
            # A worker may pick up its next task before the main thread has
            # cancelled the queue: don't send one more doomed request.
            raise _Cancelled()
        try:
            return self._sample(prompt)
        except BaseException:
            self._failed.set()
            raise

    def _sample(self, prompt: str) -> list[str]:
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        replies: list[str] = []
        if self.n > 1 and not self._n_ignored.is_set():
            replies = self._complete(messages, self.n)
            if len(replies) < self.n and not self._n_ignored.is_set():
                self._n_ignored.set()
                logger.info(
                    "the server returned %d of %d choices: asking for one "
                    "sample per request from now on", len(replies), self.n,
                )
        while len(replies) < self.n:
            more = self._complete(messages, 1)
            if not more:
                raise GenerationError(
                    f"{self.endpoint.public_url} returned no choices for {prompt!r}"
                )
            replies.extend(more)
        return replies[: self.n]

    def _complete(self, messages: list[dict], n: int) -> list[str]:
        with self._lock:
            self.requests += 1
        return self.endpoint.complete(
            messages, n=n, temperature=self.temperature, max_tokens=self.max_tokens
        )


# ----------------------------------------------------------------------------
# The cache file and its sidecar
# ----------------------------------------------------------------------------
def _read_cache(path: Path) -> dict[str, list[str]]:
    """The output file's mapping as written (keys and order kept), or {}.

    A malformed file raises: it may be someone's work, so it is never
    overwritten.
    """
    return read_mapping(path) if path.exists() else {}


def _classes_to_generate(classes: list[str], cached: Mapping[str, list]) -> list[str]:
    have = {normalize_name(k) for k, v in cached.items() if any(t.strip() for t in v)}
    return [c for c in classes if normalize_name(c) not in have]


def classes_to_generate(classes: Sequence[str], output_path: str | os.PathLike) -> list[str]:
    """The classes :func:`generate_descriptions` would ask the LLM for: those
    without a non-empty entry in ``output_path`` (all, if it does not exist).
    Makes no request.

    Raises:
        ValueError: bad class names, or a malformed existing file.
    """
    unique, _ = _check_classes(classes)
    return _classes_to_generate(unique, _read_cache(Path(output_path)))


#: the formats a generated (CuPL sentences) descriptions file is read as
GENERATED_FORMATS = ("auto", "cupl")


def check_generated_format(descriptions_format: str) -> None:
    """Raises ValueError unless a generated file can be read as this format."""
    if descriptions_format not in GENERATED_FORMATS:
        raise ValueError(
            f"generated descriptions are CuPL sentences; descriptions_format "
            f"{descriptions_format!r} cannot be generated (use 'auto' or 'cupl')"
        )


def iter_generate_before_run(
    classes: Sequence[str],
    output_path: str | os.PathLike,
    *,
    descriptions_format: str = "auto",
    **kwargs,
) -> Iterator[ProgressEvent]:
    """Complete ``output_path`` for a classification run that reads it next.

    :func:`iter_generate_descriptions` (same keywords, same events) for the
    classes the file lacks; then every class must have descriptions, so a
    run never starts with a class it cannot score.

    Raises:
        ValueError: ``descriptions_format`` is not one a generated file can
            be read as; while iterating, a class still has no description
            (the LLM's replies cleaned to nothing: not saved, asked for
            again next time); plus whatever
            :func:`iter_generate_descriptions` raises.
    """
    check_generated_format(descriptions_format)
    return _complete_events(iter_generate_descriptions(classes, output_path, **kwargs), output_path)


def generate_before_run(classes, output_path, *, progress=None, **kwargs) -> DescriptionSet:
    """:func:`iter_generate_before_run` (same keywords) run to the end;
    ``progress(done, total)`` as for :func:`generate_descriptions`."""
    return drain(iter_generate_before_run(classes, output_path, **kwargs), progress)


def _complete_events(events: Iterator[ProgressEvent], output_path) -> Iterator[ProgressEvent]:
    with contextlib.closing(events):  # closing this closes the generation
        for event in events:
            missing = event.result.missing_classes() if event.is_final else None
            if missing:
                raise ValueError(
                    f"the LLM gave no usable description for {len(missing)} "
                    f"class(es): {preview(missing)}. They were not saved to "
                    f"{output_path} and are asked for again on the next run "
                    "(or add them to the file by hand); nothing was classified"
                )
            yield event


def _run_record(endpoint: ChatEndpoint, settings: dict, generated: list[str]) -> dict:
    """One generation run, as persisted (no API key, by construction)."""
    return dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        base_url=endpoint.public_url,
        model=endpoint.model,
        **settings,
        classes=list(generated),
    )


def _write_outputs(path: Path, mapping: dict, runs: list[dict]) -> None:
    """Save the descriptions, then the sidecar describing them."""
    save_descriptions(mapping, path)
    latest = {k: v for k, v in runs[-1].items() if k != "classes"}
    meta = dict(
        source="generated",
        generator=f"{__name__}.generate_descriptions",
        **latest,
        sha256=mapping_sha256(mapping),
        runs=runs,
    )
    write_json_atomic(sidecar_path(path), meta)


def _previous_runs(path: Path) -> list[dict]:
    meta = sidecar_path(path)
    try:
        runs = json.loads(meta.read_text(encoding="utf-8")).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return runs if isinstance(runs, list) else []


# ----------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------
def iter_generate_descriptions(
    classes: Sequence[str],
    output_path: str | os.PathLike,
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    secrets: Mapping | None = None,
    prompts: Sequence[str] | None = None,
    prompt_context: str | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    samples_per_prompt: int = DEFAULT_SAMPLES_PER_PROMPT,
    temperature: float = 0.99,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    concurrency: int = 4,
    max_retries: int = 5,
    timeout: float = 60.0,
    backoff_base: float = 1.0,
    max_backoff: float = 30.0,
) -> Iterator[ProgressEvent]:
    """Generate CuPL-style descriptions for the classes not yet in
    ``output_path``, one progress event per prompt.

    The arguments are checked when this is called; the requests are made as
    the returned iterator is consumed. :func:`generate_descriptions` runs it
    to the end.

    Args:
        classes: class names; the result is keyed by them exactly.
        output_path: the ``.json`` output, which is also the cache: classes
            already in it (matched case- and underscore-insensitively) are
            not asked for, existing entries are never changed, and the file
            is rewritten atomically after each class so an interrupted run
            resumes. The settings go to ``<output_path>.meta.json``.
        base_url, model, api_key: the endpoint; unset ones come from
            ``secrets``, then the environment (:func:`resolve_endpoint`).
        secrets: e.g. a FiftyOne operator's ``ctx.secrets``.
        prompts: question templates with one ``{}`` for the class name;
            default :data:`DEFAULT_PROMPTS`.
        prompt_context: an optional hint such as "a type of bird", placed
            after the class name in every prompt.
        system_prompt: sent before every prompt; None sends none.
        samples_per_prompt: replies per prompt, via the ``n`` parameter (one
            request per sample if the server returns fewer choices).
        temperature: sampling temperature (CuPL used 0.99).
        max_tokens: reply length cap per sample.
        concurrency: requests in flight at once.
        max_retries: retries per request on 429, 5xx, timeouts and
            connection errors; 401/403 are never retried.
        timeout: seconds per HTTP attempt.
        backoff_base: first retry delay, doubled per retry, with jitter;
            a server's ``Retry-After`` wins, capped at ``max_backoff``.
    Returns:
        An iterator of :class:`~bifta_plugin.core.progress.ProgressEvent`:
        ``"generate"`` events ``(done, total)`` over the prompts (``total =
        classes to generate x prompts``; the first has ``done=0``), then a
        final ``"done"`` event whose ``result`` is the
        :class:`DescriptionSet` for ``classes``, with ``provenance``
        holding the settings of the run that wrote the file (base URL,
        model, prompts, samples per prompt, temperature, date), the
        number of ``requests`` this call made and the
        ``generated_classes`` it added to the file.

        Closing the iterator early drops the queued requests (the ones in
        flight finish); every class completed before stays saved.

    Raises:
        ValueError: bad arguments, an output path that is not ``.json``, a
            malformed existing output file (it is left alone), no API key
            for a server that needs one.
        AuthenticationError: while iterating: the endpoint refused the key.
        GenerationError: while iterating: the endpoint failed after
            retries, or rejected a request. Classes finished before the
            failure stay saved.
    """
    unique, _ = _check_classes(classes)
    path = Path(output_path)
    if path.suffix.lower() != ".json":
        raise ValueError(f"output_path must be a .json file; got {path}")
    prompts = _check_prompts(prompts)
    _check_sampling(samples_per_prompt, temperature, max_tokens, concurrency)
    endpoint = resolve_endpoint(
        base_url, model, api_key, secrets=secrets, timeout=timeout,
        max_retries=max_retries, backoff_base=backoff_base, max_backoff=max_backoff,
    )
    settings = dict(
        prompts=prompts,
        prompt_context=prompt_context,
        system_prompt=system_prompt,
        samples_per_prompt=samples_per_prompt,
        temperature=temperature,
        max_tokens=max_tokens,
    )

    cached = _read_cache(path)
    todo = _classes_to_generate(unique, cached)
    if todo and endpoint.lacks_required_key:
        raise ValueError(
            "no API key for api.openai.com: pass api_key or set "
            "BIFTA_LLM_API_KEY / OPENAI_API_KEY"
        )
    sampler = _Sampler(
        endpoint, system_prompt=system_prompt, n=samples_per_prompt,
        temperature=temperature, max_tokens=max_tokens,
    )
    job = _Job(path, unique, todo, cached, sampler, settings, prompt_context, concurrency)
    return _generation_events(job)


def generate_descriptions(
    classes: Sequence[str],
    output_path: str | os.PathLike,
    *,
    progress: Callable[[int, int], None] | None = None,
    **kwargs,
) -> DescriptionSet:
    """:func:`iter_generate_descriptions` (same keywords) run to the end.

    Args:
        progress: called as ``progress(done, total)`` after each prompt of
            each class (``total = classes to generate x prompts``), and
            once with ``done=0`` first.

    Returns:
        The :class:`DescriptionSet` for ``classes`` (see
        :func:`iter_generate_descriptions`).
    """
    return drain(iter_generate_descriptions(classes, output_path, **kwargs), progress)


@dataclasses.dataclass(frozen=True)
class _Job:
    """A checked generation request: what :func:`_generation_events` runs."""

    path: Path
    classes: list
    todo: list
    cached: dict
    sampler: "_Sampler"
    settings: dict
    prompt_context: str | None
    concurrency: int


def _generation_events(job: _Job) -> Iterator[ProgressEvent]:
    endpoint = job.sampler.endpoint
    if job.todo:
        logger.info(
            "%d of %d classes already in %s; generating %d with %s at %s",
            len(job.classes) - len(job.todo), len(job.classes), job.path, len(job.todo),
            endpoint.model, endpoint.public_url,
        )
        yield from _generate(job)
    else:
        logger.info("all %d classes already in %s; no request made", len(job.classes), job.path)
    result = _result(
        job.path, job.classes, endpoint, job.settings, job.sampler.requests, job.todo
    )
    yield ProgressEvent(DONE, len(job.classes), len(job.classes), "descriptions ready", result)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_prompts(prompts: Sequence[str] | None) -> list[str]:
    if prompts is None:
        return list(DEFAULT_PROMPTS)
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings with one '{}' each")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} must be a string; got {prompt!r}")
        _check_template(prompt, "prompts", i)
    return list(prompts)


def _check_sampling(samples_per_prompt, temperature, max_tokens, concurrency) -> None:
    for name, value in (
        ("samples_per_prompt", samples_per_prompt),
        ("max_tokens", max_tokens),
        ("concurrency", concurrency),
    ):
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"{name} must be an integer >= 1; got {value!r}",
        )
    _require(
        isinstance(temperature, (int, float)) and 0 <= temperature <= 2,
        f"temperature must be in [0, 2]; got {temperature!r}",
    )


class _Collector:
    """Gathers the replies of each class; saves a class once all are in."""

    def __init__(self, path: Path, cached: dict, todo: list[str], num_prompts: int, record: dict):
        self.path = path
        self.cached = cached
        self.todo = todo
        self.record = record
        self.runs = _previous_runs(path) + [record]
        self.new: dict[str, list[str]] = {}
        self._replies = {c: [None] * num_prompts for c in todo}
        self._left = {c: num_prompts for c in todo}

    def add(self, name: str, index: int, replies: list[str]) -> None:
        self._replies[name][index] = replies
        self._left[name] -= 1
        if self._left[name]:
            return
        lines = _class_lines(name, self._replies.pop(name))
        if lines:
            self.new[name] = lines
            self.record["classes"] = [c for c in self.todo if c in self.new]
            _write_outputs(self.path, self._mapping(), self.runs)

    def _mapping(self) -> dict:
        """Cached entries first, as they were, then new classes in request order."""
        out = dict(self.cached)
        out.update((c, self.new[c]) for c in self.todo if c in self.new)
        return out


def _generate(job: _Job) -> Iterator[ProgressEvent]:
    """Run every (class, prompt) request; save each class as it completes;
    an event after each finished prompt."""
    todo, sampler, settings = job.todo, job.sampler, job.settings
    prompts = settings["prompts"]
    record = _run_record(sampler.endpoint, settings, [])
    collector = _Collector(job.path, job.cached, todo, len(prompts), record)
    total, done = len(todo) * len(prompts), 0
    yield _prompt_event(0, total)
    pool = ThreadPoolExecutor(max_workers=job.concurrency, thread_name_prefix="bifta-llm")
    try:
        # Class-major submission, so classes finish (and get saved) in order.
        tasks = [
            (c, i, fill_prompt(p, c, job.prompt_context))
            for c in todo
            for i, p in enumerate(prompts)
        ]
        futures = [pool.submit(sampler.sample, prompt) for _, _, prompt in tasks]
        index = {future: k for k, future in enumerate(futures)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            errors = []
            for future in sorted(finished, key=index.get):
                if future.exception() is not None:
                    errors.append(future.exception())  # raised after saving the rest
                    continue
                name, i, _ = tasks[index[future]]
                collector.add(name, i, future.result())
                done += 1
                yield _prompt_event(done, total)
            if errors:
                real = [e for e in errors if not isinstance(e, _Cancelled)]
                raise (real or errors)[0]
    finally:
        # On an error or a close (GeneratorExit), drop queued requests;
        # in-flight ones finish (bounded by concurrency x timeout).
        pool.shutdown(wait=True, cancel_futures=True)


def _prompt_event(done: int, total: int) -> ProgressEvent:
    return ProgressEvent("generate", done, total, f"{done}/{total} prompts")


def _class_lines(name: str, replies: list[list[str]]) -> list[str]:
    lines = [s for group in replies for reply in group for s in clean_reply(reply)]
    lines = _unique_lines(lines)
    if not lines:
        logger.warning(
            "no usable sentence for %r after cleaning; it is not saved and "
            "will be asked for again next run", name,
        )
    return lines


def _result(
    path: Path,
    classes: list[str],
    endpoint: ChatEndpoint,
    settings: dict,
    requests: int,
    todo: list[str],
) -> DescriptionSet:
    """Load the output back for ``classes`` and attach the provenance;
    ``todo``: the classes this call asked for."""
    if path.exists():
        result = load_descriptions(path, classes, format="cupl")
    else:  # every class came back empty: nothing was written
        result = load_descriptions({}, classes, format="cupl")
    generation = result.provenance.get("generation")
    # A cache file without a sidecar: the best we know is this call's settings.
    known = generation or dict(
        base_url=endpoint.public_url, model=endpoint.model, date=None, **settings
    )
    keys = ("base_url", "model", "prompts", "samples_per_prompt", "temperature", "date")
    info = {k: known.get(k) for k in keys}
    return dataclasses.replace(
        result,
        source=f"generated:{info['model']}",
        provenance=dict(
            source="generated",
            path=str(path),
            format="cupl",
            sha256=result.sha256,
            **info,
            requests=requests,
            generated_classes=[c for c in todo if c in result.descriptions],
            generation=generation,
        ),
    )
