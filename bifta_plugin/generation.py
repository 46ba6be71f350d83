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

Only the standard library talks HTTP (``urllib.request``), so this adds no
dependency. The API key is sent in the ``Authorization`` header and nowhere
else: it is never written to a file, logged, put in an exception message or
shown in a ``repr``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .descriptions import (
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
from .classnames import wordify

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
BASE_URL_VARS = ("BIFTA_LLM_BASE_URL", "OPENAI_BASE_URL")
MODEL_VARS = ("BIFTA_LLM_MODEL",)
API_KEY_VARS = ("BIFTA_LLM_API_KEY", "OPENAI_API_KEY")

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
DEFAULT_MAX_TOKENS = 80  # CuPL used 50 with GPT-3; chat models are wordier
_MAX_MESSAGE_CHARS = 300  # server error text kept in our messages


class GenerationError(RuntimeError):
    """The endpoint failed or answered something unusable."""


class AuthenticationError(GenerationError):
    """The endpoint refused the credentials (HTTP 401/403); never retried."""


# ----------------------------------------------------------------------------
# Endpoint
# ----------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class ChatEndpoint:
    """An OpenAI-compatible chat-completions endpoint plus retry policy.

    Build one with :func:`resolve_endpoint`. ``repr`` masks the API key;
    do not ``dataclasses.asdict`` this object into anything persisted.

    Attributes:
        base_url: e.g. ``"https://api.openai.com/v1"``;
            ``{base_url}/chat/completions`` is POSTed to.
        model: the model name sent with every request.
        api_key: sent as ``Authorization: Bearer``; None sends no header
            (local servers such as Ollama).
        timeout: seconds per HTTP attempt.
        max_retries: retries after the first attempt, on 429, 5xx, timeouts
            and connection errors.
        backoff_base: first retry delay in seconds, doubled per retry, with
            jitter (tests set it near 0).
        max_backoff: cap on any single delay, ``Retry-After`` included.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 5
    backoff_base: float = 1.0
    max_backoff: float = 30.0

    def __repr__(self) -> str:
        key = "'***'" if self.api_key else "None"
        return (
            f"ChatEndpoint(base_url={self.public_url!r}, model={self.model!r}, "
            f"api_key={key}, timeout={self.timeout}, max_retries={self.max_retries})"
        )

    __str__ = __repr__

    @property
    def public_url(self) -> str:
        """``base_url`` without any ``user:password@`` part: safe to log."""
        parts = urllib.parse.urlsplit(self.base_url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def complete(
        self,
        messages: list[dict],
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> list[str]:
        """One chat-completions request; the text of every returned choice.

        The server may return fewer than ``n`` choices (some ignore ``n``).

        Raises:
            AuthenticationError: HTTP 401/403.
            GenerationError: other 4xx, retries exhausted, or a malformed reply.
        """
        payload = dict(
            model=self.model,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        if n > 1:
            payload["n"] = n
        reply = self._post(json.dumps(payload).encode("utf-8"))
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list):
            raise GenerationError(
                f"{self.public_url} answered without a 'choices' list: "
                f"{self._safe(json.dumps(reply)[:_MAX_MESSAGE_CHARS])}"
            )
        return [_choice_text(c) for c in choices]

    # -- HTTP with retries ---------------------------------------------------
    def _post(self, data: bytes) -> Any:
        attempt = 0
        while True:
            try:
                return self._post_once(data)
            except _Retryable as e:
                if attempt >= self.max_retries:
                    raise GenerationError(
                        f"request to {self.public_url} failed after "
                        f"{attempt + 1} attempt(s): {e}"
                    ) from None
                delay = self._delay(attempt, e.retry_after)
                logger.debug(
                    "%s from %s; retry %d/%d in %.2fs",
                    e, self.public_url, attempt + 1, self.max_retries, delay,
                )
                time.sleep(delay)
                attempt += 1

    def _post_once(self, data: bytes) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        failure = None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            failure = self._http_failure(e)
        except TimeoutError:
            failure = _Retryable(f"no answer within {self.timeout}s")
        except urllib.error.URLError as e:
            failure = _Retryable(f"cannot reach the server ({self._safe(str(e.reason))})")
        except (http.client.HTTPException, OSError) as e:
            failure = _Retryable(f"connection error ({type(e).__name__})")
        if failure is not None:
            # Raised outside the except blocks so no urllib object rides along
            # as __context__.
            raise failure
        try:
            return json.loads(body)
        except ValueError:
            snippet = body[:_MAX_MESSAGE_CHARS].decode("utf-8", "replace")
            raise GenerationError(
                f"{self.public_url} answered with invalid JSON: {self._safe(snippet)!r}"
            ) from None

    def _http_failure(self, error: urllib.error.HTTPError) -> Exception:
        status = error.code
        try:
            body = error.read().decode("utf-8", "replace")
        except Exception:  # the body is only for the message
            body = ""
        finally:
            error.close()
        if status in (401, 403):
            # The server's text is left out on purpose: some servers echo
            # (part of) the key they were given.
            return AuthenticationError(
                f"authentication failed at {self.public_url} (HTTP {status}): "
                "check the API key"
            )
        if status in (408, 409, 429) or status >= 500:
            return _Retryable(f"HTTP {status}", _retry_after(error.headers))
        return GenerationError(
            f"{self.public_url} rejected the request (HTTP {status}, model "
            f"{self.model!r}): {self._safe(_server_message(body))}"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        # Exponential backoff with jitter, so parallel workers that failed
        # together do not retry together.
        base = self.backoff_base * (2**attempt)
        return min(base * random.uniform(0.5, 1.0), self.max_backoff)

    def _safe(self, text: str) -> str:
        """``text`` with the API key masked (servers sometimes echo it)."""
        if self.api_key:
            text = text.replace(self.api_key, "***")
        return text


class _Retryable(Exception):
    """A failure worth another attempt; ``retry_after`` from the server."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def _retry_after(headers) -> float | None:
    """Seconds from a ``Retry-After`` header (the HTTP-date form is ignored)."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return max(seconds, 0.0)


def _server_message(body: str) -> str:
    """The human part of an error body, truncated."""
    message = body.strip()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            error = error.get("message") or error
        message = error if isinstance(error, str) else json.dumps(error)
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    return message or "(no message)"


def _choice_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    message = choice.get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if content is None:
        content = choice.get("text")  # completions-style servers
    return content if isinstance(content, str) else ""


def _lookup(
    explicit: str | None, names: Sequence[str], secrets: Mapping | None
) -> str | None:
    """``explicit``, else the first of ``names`` in ``secrets``, else in env."""
    if explicit:
        return explicit
    for name in names:
        value = _secret(secrets, name)
        if value:
            return value
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _secret(secrets: Mapping | None, name: str) -> str | None:
    """One secret from a dict or FiftyOne's ``ctx.secrets``.

    ``ctx.secrets`` answers None for unknown keys, and may hand back a secret
    object with ``.value`` on first access.
    """
    if secrets is None:
        return None
    try:
        value = secrets[name]
    except (KeyError, TypeError):
        return None
    value = getattr(value, "value", value)
    return value if isinstance(value, str) and value else None


def endpoint_secrets(secrets: Mapping | None) -> dict[str, str]:
    """The endpoint settings found in ``secrets`` as a plain dict.

    FiftyOne's ``ctx.secrets`` resolves lazily through the operator's
    context; read it once on the operator's thread and hand this copy to
    worker threads. Held in memory only, never written anywhere.
    """
    names = (*BASE_URL_VARS, *MODEL_VARS, *API_KEY_VARS)
    found = {name: _secret(secrets, name) for name in names}
    return {name: value for name, value in found.items() if value}


def resolve_endpoint(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    *,
    secrets: Mapping | None = None,
    timeout: float = 60.0,
    max_retries: int = 5,
    backoff_base: float = 1.0,
    max_backoff: float = 30.0,
) -> ChatEndpoint:
    """Settle the endpoint from arguments, then ``secrets``, then env.

    - base URL: ``BIFTA_LLM_BASE_URL``, ``OPENAI_BASE_URL``, default
      ``https://api.openai.com/v1``;
    - model: ``BIFTA_LLM_MODEL``, default ``gpt-4o-mini``;
    - API key: ``BIFTA_LLM_API_KEY``, ``OPENAI_API_KEY``; none is fine for
      local servers.

    Args:
        secrets: a mapping checked before the environment, e.g. a FiftyOne
            operator's ``ctx.secrets``.

    Raises:
        ValueError: a base URL that is not http(s), or bad retry settings.
    """
    base_url = _lookup(base_url, BASE_URL_VARS, secrets) or DEFAULT_BASE_URL
    model = _lookup(model, MODEL_VARS, secrets) or DEFAULT_MODEL
    api_key = _lookup(api_key, API_KEY_VARS, secrets)
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise ValueError(
            f"LLM base URL must start with http:// or https://; got {base_url!r}"
        )
    _require(timeout > 0, f"timeout must be > 0 seconds; got {timeout!r}")
    _require(
        isinstance(max_retries, int) and max_retries >= 0,
        f"max_retries must be an integer >= 0; got {max_retries!r}",
    )
    _require(
        backoff_base >= 0 and max_backoff >= 0,
        "backoff_base and max_backoff must be >= 0 seconds",
    )
    return ChatEndpoint(
        base_url=base_url,
        model=model,
        api_key=api_key,
        timeout=float(timeout),
        max_retries=max_retries,
        backoff_base=float(backoff_base),
        max_backoff=float(max_backoff),
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


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
def generate_descriptions(
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
    progress: Callable[[int, int], None] | None = None,
) -> DescriptionSet:
    """Generate CuPL-style descriptions for the classes not yet in ``output_path``.

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
        progress: called as ``progress(done, total)`` after each prompt of
            each class (``total = classes to generate x prompts``).

    Returns:
        The :class:`DescriptionSet` for ``classes``, with ``provenance``
        holding the settings of the run that wrote the file (base URL,
        model, prompts, samples per prompt, temperature, date) and the
        number of ``requests`` this call made.

    Raises:
        ValueError: bad arguments, an output path that is not ``.json``, or
            a malformed existing output file (it is left alone).
        AuthenticationError: the endpoint refused the API key.
        GenerationError: the endpoint failed after retries, or rejected a
            request. Classes finished before the failure stay saved.
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
    requests = 0
    if todo:
        logger.info(
            "%d of %d classes already in %s; generating %d with %s at %s",
            len(unique) - len(todo), len(unique), path, len(todo),
            endpoint.model, endpoint.public_url,
        )
        host = urllib.parse.urlsplit(endpoint.base_url).hostname
        if not endpoint.api_key and host == "api.openai.com":
            raise ValueError(
                "no API key for api.openai.com: pass api_key or set "
                "BIFTA_LLM_API_KEY / OPENAI_API_KEY"
            )
        sampler = _Sampler(
            endpoint, system_prompt=system_prompt, n=samples_per_prompt,
            temperature=temperature, max_tokens=max_tokens,
        )
        _generate(todo, path, cached, sampler, settings, prompt_context, concurrency, progress)
        requests = sampler.requests
    else:
        logger.info("all %d classes already in %s; no request made", len(unique), path)
    return _result(path, unique, endpoint, settings, requests)


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


def _generate(
    todo: list[str],
    path: Path,
    cached: dict,
    sampler: _Sampler,
    settings: dict,
    prompt_context: str | None,
    concurrency: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Run every (class, prompt) request; save each class as it completes."""
    prompts = settings["prompts"]
    record = _run_record(sampler.endpoint, settings, [])
    collector = _Collector(path, cached, todo, len(prompts), record)
    total, done = len(todo) * len(prompts), 0
    if progress:
        progress(0, total)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bifta-llm")
    try:
        # Class-major submission, so classes finish (and get saved) in order.
        tasks = [
            (c, i, fill_prompt(p, c, prompt_context))
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
                if progress:
                    progress(done, total)
            if errors:
                real = [e for e in errors if not isinstance(e, _Cancelled)]
                raise (real or errors)[0]
    finally:
        # On an error, drop queued requests; in-flight ones finish (bounded
        # by concurrency x timeout).
        pool.shutdown(wait=True, cancel_futures=True)


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
    path: Path, classes: list[str], endpoint: ChatEndpoint, settings: dict, requests: int
) -> DescriptionSet:
    """Load the output back for ``classes`` and attach the provenance."""
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
    result.source = f"generated:{info['model']}"
    result.provenance = dict(
        source="generated",
        path=str(path),
        format="cupl",
        sha256=result.sha256,
        **info,
        requests=requests,
        generation=generation,
    )
    return result
