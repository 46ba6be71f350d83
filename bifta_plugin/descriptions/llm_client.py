"""A minimal client for OpenAI-compatible chat-completions endpoints
(OpenAI, Azure-style proxies, vLLM, llama.cpp server, Ollama, LM Studio...).

:func:`resolve_endpoint` settles base URL, model and API key from arguments,
then a secrets mapping (FiftyOne's ``ctx.secrets``), then the environment;
:class:`ChatEndpoint` posts with retries and backoff on 429, 5xx, timeouts
and connection errors, never retries 401/403, and honours ``Retry-After``.

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
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
BASE_URL_VARS = ("BIFTA_LLM_BASE_URL", "OPENAI_BASE_URL")
MODEL_VARS = ("BIFTA_LLM_MODEL",)
API_KEY_VARS = ("BIFTA_LLM_API_KEY", "OPENAI_API_KEY")
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

    @property
    def lacks_required_key(self) -> bool:
        """No API key for api.openai.com, which always needs one (local
        servers usually need none)."""
        host = urllib.parse.urlsplit(self.base_url).hostname
        return not self.api_key and host == "api.openai.com"

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
