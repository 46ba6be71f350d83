"""``run_bifta`` with "generate missing descriptions first", through the real
registry, executor and delegated queue, against the local OpenAI-compatible
server of test_generation.py.

The API key reaches the server through the environment (how open-source
FiftyOne resolves plugin secrets) and must appear nowhere else: results,
run records, sample fields, the descriptions file, its sidecar, the logs.
"""

from __future__ import annotations

import json
import logging

import pytest

from test_generation import FakeLLM, clean_env, llm  # noqa: F401 (fixtures)
from test_operators import (  # noqa: F401 (fixtures)
    CLASSES,
    CROPS,
    URI,
    _execute,
    _form,
    _requests,
    base_params,
    dataset,
)

pytestmark = pytest.mark.fiftyone

API_KEY = "sk-test-" + "g3nerate-first-secret"


@pytest.fixture(autouse=True)
def llm_env(clean_env, monkeypatch):
    """test_generation's clean environment, plus the key as a user sets it."""
    monkeypatch.setenv("BIFTA_LLM_API_KEY", API_KEY)


@pytest.fixture
def partial_file(tmp_path):
    """A descriptions file with only one of the three classes."""
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"cat": ["a small furry pet with whiskers."]}))
    return path


def _gen_params(base_params, llm, path, **extra):
    return dict(
        base_params,
        **CROPS,
        method="bifta",
        descriptions_path=str(path),
        generate_missing=True,
        llm_base_url=llm.base_url,
        llm_model="fake-model",
        llm_samples_per_prompt=1,
        **extra,
    )


def _streamed(result):
    from bifta_plugin.ui.run_execution import streamed_results

    assert result.error is None, result.error
    return streamed_results(result)


def _progress_labels(result):
    return [
        r["params"].get("label", "")
        for r in result.executor.to_json()["requests"]
        if r["operator_uri"].endswith("set_progress")
    ]


def _assert_no_key(*texts):
    for text in texts:
        assert API_KEY not in text


# ----------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------
def test_generates_missing_classes_then_classifies(
    llm, dataset, base_params, partial_file, caplog
):
    caplog.set_level(logging.DEBUG, logger="bifta_plugin")
    params = _gen_params(base_params, llm, partial_file, label_field="gen")
    result = _execute(dataset, params)
    out = _streamed(result)

    # only the two missing classes were asked for (5 prompts each)
    assert len(llm.requests) == 2 * 5
    assert sum("astronaut" in p for p in llm.prompts) == 5
    assert sum("coffee" in p for p in llm.prompts) == 5
    for request in llm.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["authorization"] == f"Bearer {API_KEY}"

    saved = json.loads(partial_file.read_text())
    assert saved["cat"] == ["a small furry pet with whiskers."]  # untouched
    assert saved["astronaut"] and saved["coffee"]

    gen = out["generation"]
    assert gen["generated_classes"] == ["astronaut", "coffee"]
    assert gen["model"] == "fake-model" and gen["requests"] == 10
    assert out["num_processed"] == 3 and out["method"] == "bifta"
    labels = _progress_labels(result)
    assert any(label.endswith("description prompts") for label in labels)
    assert any(label.endswith("samples") for label in labels)
    assert labels.index(next(x for x in labels if "prompts" in x)) < labels.index(
        next(x for x in labels if x.endswith("samples"))
    )

    # the run records the generated file's provenance
    from bifta_plugin.sdk import records as runs

    info = runs.get_bifta_run_info(dataset, "gen")
    desc = info["descriptions"]
    assert desc["source"] == str(partial_file)
    assert desc["provenance"]["generation"]["model"] == "fake-model"
    assert desc["provenance"]["generation"]["runs"][-1]["classes"] == ["astronaut", "coffee"]

    dataset.reload()
    fields = json.dumps(
        [s.to_dict() for s in dataset.select_fields(["gen", "gen_error"])], default=str
    )
    _assert_no_key(
        json.dumps(out),
        json.dumps(info, default=str),
        fields,
        json.dumps(result.executor.to_json(), default=str),
        partial_file.read_text(),
        (partial_file.parent / "partial.json.meta.json").read_text(),
        caplog.text,
    )

    # a second run asks for nothing: the file is the cache
    before = len(llm.requests)
    again = _streamed(_execute(dataset, dict(params, overwrite=True)))
    assert len(llm.requests) == before
    assert again["generation"]["generated_classes"] == []


def test_creates_the_file_with_field_classes_of_the_whole_dataset(
    llm, dataset, base_params, tmp_path
):
    """Classes from a field come from the whole dataset, also when the run
    targets a selection where some labels do not occur."""
    import fiftyone.operators as foo

    path = tmp_path / "new" / "created.json"
    params = _gen_params(base_params, llm, path, label_field="fromfield")
    params.pop("classes")
    params.update(classes_source="field", classes_field="ground_truth")
    first = dataset.first()
    result = foo.execute_operator(
        URI,
        ctx=dict(
            dataset=dataset.name,
            view=dataset.select(first.id),
            params=dict(params, view_target="CURRENT_VIEW"),
        ),
    )
    out = _streamed(result)
    all_labels = sorted(dataset.distinct("ground_truth.label"))
    assert len(all_labels) == 3
    assert sorted(json.loads(path.read_text())) == all_labels
    assert out["num_samples"] == 1
    assert sorted(out["generation"]["classes"]) == all_labels
    dataset.reload()
    logits = dataset.select(first.id).first()["fromfield"].logits
    assert len(logits) == 3  # scored against every class of the dataset


def test_auth_failure_stops_before_classifying(llm, dataset, base_params, partial_file):
    llm.fail_when = lambda payload: dict(
        status=401, body={"error": {"message": "Incorrect API key provided"}}
    )
    from fiftyone.operators.executor import ExecutionError

    before = partial_file.read_text()
    with pytest.raises(ExecutionError) as info:
        _execute(dataset, _gen_params(base_params, llm, partial_file, label_field="noauth"))
    message = str(info.value)
    assert "AuthenticationError" in message and "HTTP 401" in message
    _assert_no_key(message)
    # never retried; at most the requests already in flight (concurrency 4)
    assert 1 <= len(llm.requests) <= 4
    assert len(set(llm.prompts)) == len(llm.prompts)
    assert partial_file.read_text() == before
    dataset.reload()
    assert "noauth" not in dataset.get_field_schema()
    assert "noauth" not in dataset.list_runs()


def test_unusable_replies_stop_with_a_clear_error(llm, dataset, base_params, partial_file):
    from fiftyone.operators.executor import ExecutionError

    llm.reply = lambda payload, k: "**Sure!**\n\n- \n1."  # cleans to nothing
    with pytest.raises(ExecutionError) as info:
        _execute(dataset, _gen_params(base_params, llm, partial_file, label_field="empty"))
    message = str(info.value)
    assert "no usable description for 2 class(es): astronaut, coffee" in message
    assert "nothing was classified" in message
    assert json.loads(partial_file.read_text()) == {"cat": ["a small furry pet with whiskers."]}
    dataset.reload()
    assert "empty" not in dataset.get_field_schema()


def test_delegated_run_generates_then_classifies(llm, dataset, base_params, tmp_path):
    from fiftyone.operators.delegated import DelegatedOperationService

    path = tmp_path / "delegated.json"
    result = _execute(
        dataset,
        _gen_params(base_params, llm, path, label_field="deleg"),
        request_delegation=True,
    )
    op_id = result.result["id"]
    assert not llm.requests and not path.exists()  # queued, nothing asked yet
    dos = DelegatedOperationService()
    try:
        dos.execute_queued_operations(operator=URI, dataset_name=dataset.name)
        doc = dos.get(op_id)
        assert doc.run_state == "completed", doc.result
        out = doc.result.result
        assert out["generation"]["generated_classes"] == CLASSES
        assert out["num_processed"] == 3
        assert doc.status.label == "3/3 samples"
        _assert_no_key(json.dumps(doc.to_pymongo(), default=str))
    finally:
        dos.delete_operation(op_id)
    assert sorted(json.loads(path.read_text())) == sorted(CLASSES)


def test_call_with_generate_missing(llm, dataset, tiny_model_name, partial_file):
    import fiftyone.operators as foo

    from bifta_plugin.sdk.options import EncoderSpec, OutputSpec

    op = foo.get_operator(URI)
    res = op(
        dataset,
        classes=CLASSES,
        descriptions_path=partial_file,
        method="wca",
        output=OutputSpec("called"),
        encoder=EncoderSpec(tiny_model_name, None, device="cpu"),
        num_candidates=3,
        max_views=3,
        generate_missing=True,
        llm_base_url=llm.base_url,
        llm_samples_per_prompt=2,
        llm_temperature=0.3,
        llm_prompt_context="a thing in a photo",
    )
    assert res.error is None, res.error
    assert res.result["generation"]["generated_classes"] == ["astronaut", "coffee"]
    payloads = [r["payload"] for r in llm.requests]
    assert {p["n"] for p in payloads} == {2}
    assert {p["temperature"] for p in payloads} == {0.3}
    assert all("a thing in a photo" in p for p in llm.prompts)


def test_without_generate_missing_no_request_is_made(llm, dataset, base_params, partial_file):
    """An incomplete file without the option is refused by the form's
    validation, before anything runs or is asked."""
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError) as info:
        _execute(
            dataset,
            dict(base_params, method="bifta", descriptions_path=str(partial_file), label_field="x"),
        )
    assert "2 of 3 classes have no descriptions" in str(info.value)
    assert not llm.requests
    dataset.reload()
    assert "x" not in dataset.get_field_schema()


# ----------------------------------------------------------------------------
# The form
# ----------------------------------------------------------------------------
def test_form_reports_what_will_be_generated(llm, dataset, base_params, partial_file):
    props = _form(dataset, _gen_params(base_params, llm, partial_file))
    for name in ("llm_base_url", "llm_model", "llm_samples_per_prompt", "llm_temperature"):
        assert name in props
    assert not props["descriptions_path"].invalid
    plan = props["generation_plan"].view.label
    assert "2 of 3 classes will be generated" in plan
    assert "astronaut" in plan and "fake-model" in plan and "API key set" in plan
    assert API_KEY not in json.dumps({k: p.to_json() for k, p in props.items()})
    assert not llm.requests  # the form never calls the LLM


def test_form_accepts_a_new_file_only_when_generating(llm, dataset, base_params, tmp_path):
    new = tmp_path / "not-yet.json"
    props = _form(dataset, _gen_params(base_params, llm, new))
    assert not props["descriptions_path"].invalid
    assert "3 of 3 classes" in props["generation_plan"].view.label

    props = _form(dataset, dict(base_params, method="bifta", descriptions_path=str(new)))
    assert props["descriptions_path"].invalid
    assert "not found" in props["descriptions_path"].error_message


def test_form_rejects_bad_generation_settings(llm, dataset, base_params, tmp_path):
    props = _form(dataset, _gen_params(base_params, llm, tmp_path / "d.yaml"))
    assert props["descriptions_path"].invalid
    assert ".json" in props["descriptions_path"].error_message

    params = _gen_params(base_params, llm, tmp_path / "d.json")
    props = _form(dataset, dict(params, llm_base_url="ftp://x"))
    assert props["llm_base_url"].invalid

    props = _form(
        dataset,
        _gen_params(base_params, llm, tmp_path / "d.json", descriptions_format="dclip"),
    )
    assert props["generate_missing"].invalid
    assert "dclip" in props["generate_missing"].error_message

    params = _gen_params(base_params, llm, tmp_path / "d.json")
    params.pop("descriptions_path")
    props = _form(dataset, params)
    assert props["descriptions_path"].invalid
    assert props["descriptions_path"].type.__class__.__name__ == "String"


def test_form_checks_coverage_of_an_existing_file(dataset, base_params, partial_file, tmp_path):
    props = _form(dataset, dict(base_params, method="bifta", descriptions_path=str(partial_file)))
    message = props["descriptions_path"].error_message
    assert props["descriptions_path"].invalid
    assert "2 of 3 classes have no descriptions" in message and "Generate missing" in message

    full = tmp_path / "full.json"
    full.write_text(json.dumps({c.upper(): [f"a photo of {c}."] for c in CLASSES} | {"x": ["y"]}))
    props = _form(dataset, dict(base_params, method="wca", descriptions_path=str(full)))
    assert not props["descriptions_path"].invalid
    info = props["descriptions_info"].view.label
    assert "all 3 classes" in info and "1 unused keys" in info

    bad = tmp_path / "bad.json"
    bad.write_text('{"cat": ["ok"], "dog": 3}')
    props = _form(dataset, dict(base_params, method="wca", descriptions_path=str(bad)))
    assert props["descriptions_path"].invalid
    assert "dog" in props["descriptions_path"].error_message


def test_generation_option_only_for_description_methods(llm, dataset, base_params, tmp_path):
    props = _form(dataset, dict(base_params, method="clip"))
    assert "generate_missing" not in props
    props = _form(dataset, dict(base_params, method="descriptions"))
    assert "generate_missing" in props


# ----------------------------------------------------------------------------
# params -> request
# ----------------------------------------------------------------------------
def test_build_run_request_generation_step(tmp_path):
    from bifta_plugin.ui.run_execution import build_run_request

    params = dict(
        classes=["a", "b"],
        method="wca",
        descriptions_path=str(tmp_path / "d.json"),
        generate_missing=True,
        llm_base_url=" http://127.0.0.1:9/v1 ",
        llm_model="m",
        llm_samples_per_prompt=3,
        llm_temperature=0.0,
        llm_prompt_context="",
    )
    request = build_run_request(params)
    assert request.generate.output_path == str(tmp_path / "d.json")
    assert request.generate.settings == dict(
        base_url="http://127.0.0.1:9/v1", model="m", samples_per_prompt=3, temperature=0.0
    )
    assert request.kwargs["descriptions"] == str(tmp_path / "d.json")

    assert build_run_request(dict(params, method="clip")).generate is None
    with pytest.raises(ValueError, match="needs descriptions_path"):
        build_run_request(dict(params, descriptions_path=None))
    with pytest.raises(ValueError, match=r"\.json"):
        build_run_request(dict(params, descriptions_path="d.txt"))
    with pytest.raises(ValueError, match="dclip"):
        build_run_request(dict(params, descriptions_format="dclip"))


def test_form_refuses_openai_without_a_key(dataset, base_params, tmp_path, monkeypatch):
    monkeypatch.delenv("BIFTA_LLM_API_KEY")
    params = dict(
        base_params, method="wca", descriptions_path=str(tmp_path / "d.json"),
        generate_missing=True,
    )  # fmt: skip
    props = _form(dataset, params)
    assert "api.openai.com" in props["generation_plan"].view.label
    assert props["llm_base_url"].invalid
    assert "No API key for api.openai.com" in props["llm_base_url"].error_message
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError, match="No API key for api.openai.com"):
        _execute(dataset, dict(params, label_field="nokey"))
    dataset.reload()
    assert "nokey" not in dataset.get_field_schema()
    assert not (tmp_path / "d.json").exists()
