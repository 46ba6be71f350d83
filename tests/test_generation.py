"""LLM description generation against a real local HTTP server.

The server below speaks the OpenAI chat-completions protocol on 127.0.0.1
(port 0, a thread per request) and is scripted per test: normal replies,
markdown clutter, 429 / 5xx bursts, slow answers, auth failures. It counts
requests and the peak number of requests in flight.
"""

from __future__ import annotations

import json
import logging
import secrets as pysecrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bifta_plugin.descriptions.files import load_descriptions, save_descriptions, sidecar_path
from bifta_plugin.descriptions.generation import (
    DEFAULT_PROMPTS,
    clean_reply,
    fill_prompt,
    generate_descriptions,
)
from bifta_plugin.descriptions.llm_client import AuthenticationError, GenerationError, resolve_endpoint

PROMPTS = ["Describe what a {} looks like.", "How can you identify a {}?"]


# ----------------------------------------------------------------------------
# The fake OpenAI-compatible server
# ----------------------------------------------------------------------------
class FakeLLM:
    """Shared state of the scripted server.

    Attributes:
        script: actions consumed one per request before normal replies, each
            a dict with optional ``status``, ``headers``, ``body`` (str or
            JSON-able) and ``delay`` (seconds to sleep first).
        fail_when: ``payload -> action | None``, checked after the script.
        reply: ``(payload, k) -> str``, the k-th choice's text.
        honour_n: return ``n`` choices (False: always one, like Ollama).
        delay: seconds each normal reply takes.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.script: list[dict] = []
        self.fail_when = None
        self.honour_n = True
        self.delay = 0.0
        self._counter = 0
        self.reply = self._default_reply
        self.base_url = ""

    def _default_reply(self, payload, k):
        with self.lock:
            self._counter += 1
            return f"A distinctive visual detail number {self._counter} of this thing."

    @property
    def prompts(self) -> list[str]:
        return [r["payload"]["messages"][-1]["content"] for r in self.requests]

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", 0))
        payload = json.loads(handler.rfile.read(length))
        with self.lock:
            self.requests.append(
                dict(path=handler.path, headers=dict(handler.headers), payload=payload)
            )
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            action = self.script.pop(0) if self.script else None
        # A request stops counting as in flight just before its reply is
        # written: a client that got its reply may send the next request
        # before this thread would otherwise reach the decrement.
        finished = False

        def done():
            nonlocal finished
            if not finished:
                finished = True
                with self.lock:
                    self.in_flight -= 1

        try:
            if action is None and self.fail_when is not None:
                action = self.fail_when(payload)
            if action is not None:
                time.sleep(action.get("delay", 0.0))
                done()
                if action.get("status", 200) == 200 and "body" not in action:
                    self._ok(handler, payload)
                else:
                    self._send(
                        handler,
                        action.get("status", 200),
                        action.get("body", {}),
                        action.get("headers", {}),
                    )
                return
            time.sleep(self.delay)
            done()
            self._ok(handler, payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)
        finally:
            done()

    def _ok(self, handler, payload):
        n = payload.get("n", 1) if self.honour_n else 1
        choices = [
            dict(
                index=k,
                message=dict(role="assistant", content=self.reply(payload, k)),
                finish_reason="stop",
            )
            for k in range(n)
        ]
        self._send(
            handler,
            200,
            dict(id="x", object="chat.completion", model=payload["model"], choices=choices),
        )

    @staticmethod
    def _send(handler, status, body, headers=None):
        data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # don't wait on a handler still sleeping at teardown


@pytest.fixture
def llm():
    fake = FakeLLM()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 (http.server naming)
            if self.path != "/v1/chat/completions":
                FakeLLM._send(self, 404, {"error": {"message": f"no route {self.path}"}})
                return
            fake.handle(self)

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True
    )
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No developer settings leak in; never route 127.0.0.1 through a proxy."""
    for name in (
        "BIFTA_LLM_BASE_URL",
        "OPENAI_BASE_URL",
        "BIFTA_LLM_MODEL",
        "BIFTA_LLM_API_KEY",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def generate(llm, path, classes, **kwargs):
    options = dict(
        base_url=llm.base_url,
        model="fake-model",
        prompts=PROMPTS,
        samples_per_prompt=2,
        backoff_base=0.001,
        timeout=5.0,
    )
    options.update(kwargs)
    return generate_descriptions(classes, path, **options)


# ----------------------------------------------------------------------------
# Normal operation
# ----------------------------------------------------------------------------
def test_generates_saves_and_records_provenance(llm, tmp_path):
    out = tmp_path / "gen.json"
    calls = []
    ds = generate(
        llm, out, ["cat", "sea_lion"], progress=lambda d, t: calls.append((d, t)), temperature=0.7
    )

    assert len(llm.requests) == 4  # 2 classes x 2 prompts, n=2 in one request each
    first = llm.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["payload"]["model"] == "fake-model"
    assert first["payload"]["n"] == 2 and first["payload"]["temperature"] == 0.7
    assert first["payload"]["messages"][0]["role"] == "system"
    assert "Authorization" not in first["headers"]  # no key: no header (local servers)
    assert sorted(llm.prompts) == sorted(
        [
            "Describe what a cat looks like.",
            "How can you identify a cat?",
            "Describe what a sea lion looks like.",
            "How can you identify a sea lion?",
        ]
    )

    assert ds.classes == ["cat", "sea_lion"]
    assert all(len(v) == 4 for v in ds.descriptions.values())  # 2 prompts x 2 samples
    assert ds.source == "generated:fake-model" and ds.format == "cupl"
    p = ds.provenance
    assert p["source"] == "generated" and p["model"] == "fake-model"
    assert p["base_url"] == llm.base_url and p["prompts"] == PROMPTS
    assert p["samples_per_prompt"] == 2 and p["temperature"] == 0.7
    assert p["sha256"] == ds.sha256 and p["date"] and p["requests"] == 4

    assert json.loads(out.read_text()) == ds.descriptions
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["model"] == "fake-model" and meta["prompts"] == PROMPTS
    assert meta["runs"][-1]["classes"] == ["cat", "sea_lion"]
    # a later plain load reports where the file came from...
    reloaded = load_descriptions(out).provenance
    assert reloaded["generation"]["model"] == "fake-model"
    assert "modified_since_generation" not in reloaded
    # ...and notices a hand edit
    save_descriptions({**ds.descriptions, "cat": ["Edited."]}, out)
    assert load_descriptions(out).provenance["modified_since_generation"] is True

    assert calls[0] == (0, 4) and calls[-1] == (4, 4)


def test_markdown_replies_are_cleaned(llm, tmp_path):
    reply = (
        "Sure! Here are some ways to identify it:\n\n"
        "## Appearance\n"
        "**Plumage**\n"
        "1. **Dark brown** body with a white face ring.\n"
        "2) The bill is dark and hooked. It has long, narrow wings!\n"
        '- "A large seabird gliding low over the ocean"\n'
        "* [Image of an albatross] A seabird resting on a beach\n"
        "- dark brown BODY with a white face ring\n"
        "Would you like more details?\n"
    )
    llm.reply = lambda payload, k: reply
    ds = generate(
        llm, tmp_path / "gen.json", ["albatross"], prompts=PROMPTS[:1], samples_per_prompt=2
    )
    assert ds.descriptions["albatross"] == [
        "Dark brown body with a white face ring.",
        "The bill is dark and hooked.",
        "It has long, narrow wings.",
        "A large seabird gliding low over the ocean.",
        "A seabird resting on a beach.",
    ]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("The cat has whiskers", ["The cat has whiskers."]),
        (
            "The St. Bernard is a large dog. It drools a lot.",
            ["The St. Bernard is a large dog.", "It drools a lot."],
        ),
        ("Caption: A cat sleeping on a sofa.", ["A cat sleeping on a sofa."]),
        ('"A tabby cat in the sun".', ["A tabby cat in the sun."]),
        ("Certainly.\n\n\nOk", []),
        ("- a) A striped tail;", ["A striped tail."]),
    ],
)
def test_clean_reply_cases(reply, expected):
    assert clean_reply(reply) == expected


def test_fill_prompt_context_and_article():
    assert fill_prompt("Describe what a {} looks like.", "apple_pie", "a type of food") == (
        "Describe what an apple pie, a type of food, looks like."
    )
    assert fill_prompt("How can you identify a {}?", "wren", "a type of bird") == (
        "How can you identify a wren, a type of bird?"
    )
    assert len(DEFAULT_PROMPTS) == 5 and all(p.count("{}") == 1 for p in DEFAULT_PROMPTS)


def test_prompt_context_reaches_the_server(llm, tmp_path):
    generate(
        llm, tmp_path / "g.json", ["wren"], prompts=PROMPTS[:1], prompt_context="a type of bird"
    )
    assert llm.prompts == ["Describe what a wren, a type of bird, looks like."]


def test_falls_back_to_one_request_per_sample_when_n_is_ignored(llm, tmp_path):
    llm.honour_n = False
    ds = generate(llm, tmp_path / "g.json", ["cat"], samples_per_prompt=3, concurrency=1)
    # prompt 1: one n=3 request answered with 1 choice, then 2 single ones;
    # prompt 2: the client already knows, so 3 single requests.
    assert len(llm.requests) == 6
    assert [r["payload"].get("n") for r in llm.requests] == [3, None, None, None, None, None]
    assert len(ds.descriptions["cat"]) == 6


# ----------------------------------------------------------------------------
# Failures and retries
# ----------------------------------------------------------------------------
def test_429_then_success_honours_retry_after(llm, tmp_path):
    llm.script = [
        dict(status=429, headers={"Retry-After": "0"}, body={"error": {"message": "slow down"}})
    ]
    start = time.monotonic()
    ds = generate(llm, tmp_path / "g.json", ["cat"], prompts=PROMPTS[:1], backoff_base=5.0)
    # backoff_base=5 would sleep seconds: Retry-After: 0 won
    assert time.monotonic() - start < 2.0
    assert len(llm.requests) == 2 and len(ds.descriptions["cat"]) == 2


def test_retry_after_is_capped(llm, tmp_path):
    llm.script = [dict(status=429, headers={"Retry-After": "3600"})]
    start = time.monotonic()
    generate(llm, tmp_path / "g.json", ["cat"], prompts=PROMPTS[:1], max_backoff=0.05)
    assert time.monotonic() - start < 2.0 and len(llm.requests) == 2


def test_burst_of_500s_then_success(llm, tmp_path):
    llm.script = [
        dict(status=500),
        dict(status=502, body="<html>bad gateway</html>"),
        dict(status=503),
    ]
    ds = generate(llm, tmp_path / "g.json", ["cat"], prompts=PROMPTS[:1])
    assert len(llm.requests) == 4 and ds.descriptions["cat"]


def test_retries_exhausted(llm, tmp_path):
    llm.fail_when = lambda payload: dict(status=500)
    with pytest.raises(GenerationError, match=r"failed after 3 attempt\(s\): HTTP 500"):
        generate(llm, tmp_path / "g.json", ["cat"], prompts=PROMPTS[:1], max_retries=2)
    assert len(llm.requests) == 3
    assert not (tmp_path / "g.json").exists()


def test_timeout_then_success(llm, tmp_path):
    llm.script = [dict(delay=0.6)]  # answers, but after the client's timeout
    start = time.monotonic()
    ds = generate(llm, tmp_path / "g.json", ["cat"], prompts=PROMPTS[:1], timeout=0.2)
    assert len(llm.requests) == 2 and ds.descriptions["cat"]
    assert time.monotonic() - start < 3.0


def test_401_is_a_clear_error_without_retry(llm, tmp_path):
    llm.fail_when = lambda payload: dict(
        status=401, body={"error": {"message": "Incorrect API key"}}
    )
    with pytest.raises(AuthenticationError) as info:
        generate(llm, tmp_path / "g.json", ["cat", "dog"], api_key="wrong", concurrency=1)
    assert str(info.value) == (
        f"authentication failed at {llm.base_url} (HTTP 401): check the API key"
    )
    # no retry, and the queued requests were dropped, not sent
    assert len(llm.requests) == 1
    assert not (tmp_path / "g.json").exists()


def test_other_4xx_shows_the_server_message(llm, tmp_path):
    message = "The model 'fake-model' does not exist " + "x" * 1000
    llm.fail_when = lambda payload: dict(status=404, body={"error": {"message": message}})
    with pytest.raises(
        GenerationError,
        match=r"HTTP 404, model 'fake-model'\): The model 'fake-model' does not exist",
    ) as info:
        generate(llm, tmp_path / "g.json", ["cat"], prompts=PROMPTS[:1])
    assert len(str(info.value)) < 500  # truncated
    assert len(llm.requests) == 1


def test_malformed_reply_is_an_error(llm, tmp_path):
    llm.script = [dict(status=200, body="not json at all")]
    with pytest.raises(GenerationError, match="invalid JSON"):
        generate(llm, tmp_path / "g.json", ["cat"], prompts=PROMPTS[:1])


def test_unreachable_server(tmp_path):
    # a port nobody listens on: connection refused, retried, then a clear error
    with pytest.raises(GenerationError, match="cannot reach the server"):
        generate_descriptions(
            ["cat"],
            tmp_path / "g.json",
            base_url="http://127.0.0.1:9/v1",
            model="m",
            max_retries=1,
            backoff_base=0.001,
            timeout=1.0,
        )


def test_missing_openai_key_fails_before_any_request(tmp_path):
    with pytest.raises(ValueError, match="no API key for api.openai.com"):
        generate_descriptions(["cat"], tmp_path / "g.json")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(prompts=["no placeholder"]), "exactly one"),
        (dict(samples_per_prompt=0), "samples_per_prompt"),
        (dict(concurrency=0), "concurrency"),
        (dict(temperature=5), "temperature"),
        (dict(base_url="ftp://x"), "http"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, pattern):
    options = dict(base_url="http://127.0.0.1:9/v1", model="m")
    options.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        generate_descriptions(["cat"], tmp_path / "g.json", **options)
    with pytest.raises(ValueError, match=r"\.json"):
        generate_descriptions(["cat"], tmp_path / "g.yaml", base_url="http://x/v1")


# ----------------------------------------------------------------------------
# Cache and resume
# ----------------------------------------------------------------------------
def test_second_call_makes_no_request(llm, tmp_path):
    out = tmp_path / "g.json"
    first = generate(llm, out, ["cat", "dog"])
    count = len(llm.requests)
    second = generate(llm, out, ["Cat", "DOG"])  # matched case-insensitively
    assert len(llm.requests) == count
    assert second.provenance["requests"] == 0
    assert second.descriptions == {
        "Cat": first.descriptions["cat"],
        "DOG": first.descriptions["dog"],
    }
    assert second.provenance["model"] == "fake-model" and second.provenance["date"]


def test_new_classes_only_and_existing_untouched(llm, tmp_path):
    out = tmp_path / "g.json"
    out.write_text(json.dumps({"Cat": ["Handwritten cat sentence."]}))
    ds = generate(llm, out, ["cat", "bird"])
    assert all("bird" in p for p in llm.prompts) and len(llm.requests) == 2
    saved = json.loads(out.read_text())
    assert list(saved) == ["Cat", "bird"]
    assert saved["Cat"] == ["Handwritten cat sentence."]
    assert ds.descriptions["cat"] == ["Handwritten cat sentence."]


def test_interrupted_run_resumes_missing_classes(llm, tmp_path):
    out = tmp_path / "g.json"
    llm.fail_when = lambda payload: (
        dict(status=400, body={"error": {"message": "content filter"}})
        if "zebra" in payload["messages"][-1]["content"]
        else None
    )
    with pytest.raises(GenerationError, match="content filter"):
        generate(llm, out, ["cat", "zebra", "dog"], concurrency=1)
    saved = json.loads(out.read_text())
    assert "cat" in saved and "zebra" not in saved  # cat was saved before the failure
    cat_before = saved["cat"]

    llm.fail_when = None
    llm.requests.clear()
    ds = generate(llm, out, ["cat", "zebra", "dog"], concurrency=1)
    assert llm.prompts and not any("cat" in p for p in llm.prompts)
    assert {p.split(" a ")[-1].split()[0].rstrip("?.") for p in llm.prompts} <= {"zebra", "dog"}
    assert ds.descriptions["cat"] == cat_before
    ds.require_complete()
    meta = json.loads(sidecar_path(out).read_text())
    assert [r["classes"] for r in meta["runs"]] == [["cat"], ["zebra", "dog"]]


def test_malformed_cache_is_not_overwritten(llm, tmp_path):
    out = tmp_path / "g.json"
    out.write_text('{"cat": ["A cat."')
    with pytest.raises(ValueError, match=r"g\.json: invalid JSON at line 1"):
        generate(llm, out, ["cat", "dog"])
    assert out.read_text() == '{"cat": ["A cat."' and not llm.requests


def test_concurrency_is_bounded(llm, tmp_path):
    llm.delay = 0.05
    generate(llm, tmp_path / "g.json", [f"class{i}" for i in range(6)], concurrency=2)
    assert len(llm.requests) == 12
    assert llm.max_in_flight == 2


# ----------------------------------------------------------------------------
# Configuration and the API key
# ----------------------------------------------------------------------------
def test_resolution_order(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-env/v1")
    monkeypatch.setenv("BIFTA_LLM_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    e = resolve_endpoint()
    assert (e.base_url, e.model, e.api_key) == ("http://openai-env/v1", "env-model", "env-key")
    monkeypatch.setenv("BIFTA_LLM_BASE_URL", "http://bifta-env/v1")
    monkeypatch.setenv("BIFTA_LLM_API_KEY", "bifta-key")
    e = resolve_endpoint()
    assert (e.base_url, e.api_key) == ("http://bifta-env/v1", "bifta-key")
    # secrets (e.g. ctx.secrets) beat env; a secrets object may answer None
    e = resolve_endpoint(
        secrets={
            "BIFTA_LLM_MODEL": "secret-model",
            "OPENAI_API_KEY": "secret-key",
            "BIFTA_LLM_API_KEY": None,
        }
    )
    assert (e.model, e.api_key) == ("secret-model", "secret-key")
    # arguments beat everything
    e = resolve_endpoint("http://arg/v1", "arg-model", "arg-key", secrets={"BIFTA_LLM_MODEL": "s"})
    assert (e.base_url, e.model, e.api_key) == ("http://arg/v1", "arg-model", "arg-key")


def test_defaults_without_config():
    e = resolve_endpoint()
    assert (e.base_url, e.model, e.api_key) == ("https://api.openai.com/v1", "gpt-4o-mini", None)


def test_env_configuration_reaches_the_server(llm, tmp_path, monkeypatch):
    monkeypatch.setenv("BIFTA_LLM_BASE_URL", llm.base_url)
    monkeypatch.setenv("BIFTA_LLM_MODEL", "env-model")
    monkeypatch.setenv("BIFTA_LLM_API_KEY", "env-key")
    generate_descriptions(["cat"], tmp_path / "g.json", prompts=PROMPTS[:1], samples_per_prompt=1)
    request = llm.requests[0]
    assert request["payload"]["model"] == "env-model"
    assert request["headers"]["Authorization"] == "Bearer env-key"
    assert "n" not in request["payload"]


def test_api_key_never_leaks(llm, tmp_path, caplog):
    key = "sk-test-" + pysecrets.token_hex(16)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "g.json"
    # exercise the retry logging too
    llm.script = [dict(status=429, headers={"Retry-After": "0"}), dict(status=500)]
    ds = generate(llm, out, ["cat", "dog"], api_key=key)
    assert llm.requests[0]["headers"]["Authorization"] == f"Bearer {key}"  # it is used...

    errors = []
    # ...and a hostile server echoing it back cannot get it into our errors
    llm.fail_when = lambda payload: dict(status=401, body={"error": {"message": f"bad key {key}"}})
    with pytest.raises(AuthenticationError) as info:
        generate(llm, out, ["bird"], api_key=key)
    errors.append(str(info.value))
    llm.fail_when = lambda payload: dict(status=400, body={"error": {"message": f"echo {key}"}})
    with pytest.raises(GenerationError) as info:
        generate(llm, out, ["bird"], api_key=key)
    errors.append(str(info.value))
    assert "***" in errors[-1]
    llm.fail_when = lambda payload: dict(status=200, body=f"not json {key}")
    with pytest.raises(GenerationError) as info:
        generate(llm, out, ["bird"], api_key=key)
    errors.append(str(info.value))

    endpoint = resolve_endpoint(llm.base_url, "m", key)
    places = {
        "output file": out.read_text(),
        "sidecar": sidecar_path(out).read_text(),
        "logs": caplog.text + "".join(str(r.args) for r in caplog.records),
        "errors": "\n".join(errors),
        "provenance": json.dumps(ds.provenance) + json.dumps(ds.to_dict()),
        "repr": repr(ds) + repr(endpoint) + str(endpoint),
        "reloaded": json.dumps(load_descriptions(out).to_dict()),
    }
    assert caplog.records  # something was logged at all
    for where, text in places.items():
        assert key not in text, f"API key leaked into {where}"
    assert "api_key='***'" in repr(endpoint)


def test_generate_before_run_reports_and_requires_every_class(llm, tmp_path):
    from bifta_plugin.descriptions.generation import generate_before_run

    out = tmp_path / "run.json"
    save_descriptions({"cat": ["a cat."]}, out)
    kwargs = dict(base_url=llm.base_url, prompts=PROMPTS, samples_per_prompt=1, backoff_base=0.001)
    with pytest.raises(ValueError, match="'dclip' cannot be generated"):
        generate_before_run(["cat", "dog"], out, descriptions_format="dclip", **kwargs)
    assert not llm.requests

    result = generate_before_run(["cat", "dog"], out, **kwargs)
    assert result.provenance["generated_classes"] == ["dog"]
    assert len(llm.requests) == len(PROMPTS)

    llm.reply = lambda payload, k: "**Sure!**"  # cleans to nothing
    with pytest.raises(ValueError, match=r"no usable description for 1 class\(es\): owl"):
        generate_before_run(["cat", "dog", "owl"], out, **kwargs)
    assert set(json.loads(out.read_text())) == {"cat", "dog"}

    again = generate_before_run(["cat", "dog"], out, **kwargs)
    assert again.provenance["generated_classes"] == []
