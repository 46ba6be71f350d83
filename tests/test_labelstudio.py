"""The review round trip against a real Label Studio server.

The server (``label-studio`` from PyPI, in its own venv: scripts/install.sh
puts it in ``.venv-labelstudio``) is started here on 127.0.0.1 with a temp
data dir (a copy of the migrated template database when install.sh made one)
and an API token, and stopped after. The queue goes out through FiftyOne's
``annotate(..., backend="labelstudio")``; the reviewer is simulated through
Label Studio's own REST API; the labels come back with ``load_annotations``.

Skipped (with the reason) when the server venv or the client SDK is missing.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
import warnings

import numpy as np
import pytest
import requests

import fiftyone as fo

pytestmark = [
    pytest.mark.fiftyone,
    pytest.mark.slow,
    # label-studio-sdk 1.0.x still uses pydantic v1 style validators
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LS_VENV = os.environ.get("BIFTA_LABEL_STUDIO_VENV", os.path.join(REPO_ROOT, ".venv-labelstudio"))
LS_BIN = os.path.join(LS_VENV, "bin", "label-studio")
TOKEN = "bifta0test0token0" + "0123456789abcdef0123456"
START_TIMEOUT = 240  # s: a fresh database migrates for about a minute
CLASSES = ["cat", "dog", "fox"]


def _skip(reason):
    warnings.warn(f"Label Studio round trip NOT tested: {reason}")
    pytest.skip(reason)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """``(url, token)`` of a running server; stopped at teardown."""
    if not os.access(LS_BIN, os.X_OK):
        _skip(f"no Label Studio server at {LS_BIN} (bash scripts/install.sh)")
    try:
        import label_studio_sdk  # noqa: F401
    except ImportError:
        _skip("label-studio-sdk is not installed (requirements-dev.txt)")
    data = tmp_path_factory.mktemp("label_studio")
    template = os.path.join(LS_VENV, "template-data", "label_studio.sqlite3")
    if os.path.exists(template):
        shutil.copyfile(template, data / "label_studio.sqlite3")
    port = _free_port()
    env = dict(
        os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        # FiftyOne's client speaks the legacy "Token" auth, off by default since 1.18
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LATEST_VERSION_CHECK="false",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    log_path = data / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [LS_BIN, "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(port), "--username", "reviewer@example.com",
             "--password", "reviewer-pass-1", "--user-token", TOKEN],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc, log_path)
        yield url, TOKEN
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait(url, proc, log_path):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = requests.get(url + "/api/projects", headers=_auth(), timeout=3)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"Label Studio not up at {url} (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")


def _auth():
    return {"Authorization": f"Token {TOKEN}"}


def _probs(top, p1, p2):
    """Probabilities over CLASSES: ``p1`` on ``top``, ``p2`` on the next class."""
    i = CLASSES.index(top)
    p = np.full(len(CLASSES), (1 - p1 - p2) / (len(CLASSES) - 2))
    p[i], p[(i + 1) % len(CLASSES)] = p1, p2
    return p


@pytest.fixture
def queue(fo_dataset, sample_images):
    """Six samples with zero-shot predictions (logits), no ground truth."""
    preds = [("cat", 0.6, 0.3), ("dog", 0.5, 0.4), ("fox", 0.7, 0.2),
             ("cat", 0.55, 0.35), ("dog", 0.45, 0.35), ("fox", 0.5, 0.3)]  # fmt: skip
    paths = [sample_images[i % 3][0] for i in range(len(preds))]
    ds = fo_dataset()
    samples = []
    for path, (top, p1, p2) in zip(paths, preds):
        p = _probs(top, p1, p2)
        samples.append(
            fo.Sample(
                filepath=path,
                pred=fo.Classification(label=top, confidence=p1, logits=np.log(p).tolist()),
            )
        )
    ds.add_samples(samples)
    return ds


def test_label_studio_round_trip(label_studio, queue):
    from bifta_plugin.sdk import accept as ba
    from bifta_plugin.sdk import review as br

    url, token = label_studio
    ds = queue
    sent = br.send_for_review(
        ds, "rev", pred_field="pred", classes=CLASSES, review_field="review",
        top_k=3, url=url, api_key=token, project_name="bifta-review-test",
    )  # fmt: skip
    assert sent.num_tasks == 6 and sent.num_scored_predictions == 18

    # the server holds 6 tasks, each with the top-3 as scored predictions
    results = ds.load_annotation_results("rev", url=url, api_key=token)
    task_of = {sid: tid for tid, sid in results.uploaded_tasks.items()}
    topk = br.topk_predictions(ds, "pred", CLASSES, 3)
    for sid, tid in task_of.items():
        task = requests.get(f"{url}/api/tasks/{tid}", headers=_auth(), timeout=10).json()
        preds = sorted(task["predictions"], key=lambda p: p["model_version"])
        assert [p["model_version"] for p in preds] == ["bifta-top1", "bifta-top2", "bifta-top3"]
        got = [(p["result"][0]["value"]["choices"][0], p["score"]) for p in preds]
        want = topk[sid]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert np.allclose([g[1] for g in got], [w[1] for w in want], atol=1e-6)

    # a reviewer answers 4 of the 6 tasks: keeps 2 pre-labels, changes 2
    ids = ds.values("id")
    answers = {ids[0]: "cat", ids[1]: "fox", ids[2]: "fox", ids[3]: "dog"}
    for sid, label in answers.items():
        r = requests.post(
            f"{url}/api/tasks/{task_of[sid]}/annotations/",
            headers=_auth(),
            json={"result": [{"from_name": "review", "to_name": "image", "type": "choices",
                              "value": {"choices": [label]}}]},
            timeout=10,
        )  # fmt: skip
        assert r.status_code == 201, r.text

    reviewed = br.load_review(ds, "rev", url=url, api_key=token)
    assert sorted(reviewed) == sorted(answers)
    ds.reload()
    for sid, label in answers.items():
        assert ds[sid].review.label == label and ds[sid].review_reviewed is True
    for sid in ids[4:]:
        assert ds[sid].review_reviewed is False

    agreement = br.review_agreement(ds, "pred", "review")
    assert agreement["overall"] == {"n": 4, "agreed": 2, "rate": 0.5}
    assert agreement["classes"]["dog"] == {"n": 1, "agreed": 0, "rate": 0.0, "changed_to": {"fox": 1}}
    assert agreement["classes"]["cat"]["n"] == 2 and agreement["classes"]["cat"]["changed_to"] == {"dog": 1}

    merged = ba.accept_labels(ds.match({"review_reviewed": True}), "review", "gt")
    assert merged.num_new == 4
    assert {sid: ds[sid].gt.label for sid in answers} == answers
    assert len(ds.exists("gt")) == 4  # unreviewed samples get no ground truth
