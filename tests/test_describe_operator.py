"""``generate_descriptions`` operator and ``describe`` CLI command against a
local OpenAI-compatible server (the scripted one from test_generation.py).

The API key comes from the environment (plugin secrets resolve from env in
open-source FiftyOne); it must reach the server and nowhere else.
"""

from __future__ import annotations

import json

import pytest

from test_generation import FakeLLM, clean_env, llm  # noqa: F401 (fixtures)

pytestmark = pytest.mark.fiftyone

URI = "@bifta/bifta/generate_descriptions"
API_KEY = "sk-test-" + "d3scr1be-secret-value"


@pytest.fixture(autouse=True)
def llm_env(clean_env, monkeypatch):
    """test_generation's clean environment, plus the key as a user sets it."""
    monkeypatch.setenv("BIFTA_LLM_API_KEY", API_KEY)


def _execute(dataset, params):
    import fiftyone.operators as foo

    result = foo.execute_operator(URI, ctx=dict(dataset=dataset.name, params=params))
    assert result.error is None, result.error
    return result.result


def _check_server_saw_key(fake: FakeLLM):
    assert fake.requests
    for request in fake.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["authorization"] == f"Bearer {API_KEY}"


def test_operator_generates_typed_classes(llm, fo_dataset, tmp_path):
    ds = fo_dataset()
    out = tmp_path / "desc.json"
    classes = ["red fox", "barn owl", "sea otter"]
    result = _execute(
        ds,
        dict(
            classes=classes,
            output_path=str(out),
            base_url=llm.base_url,
            model="fake-model",
            samples_per_prompt=2,
            temperature=0.5,
            prompt_context="a wild animal",
        ),
    )
    assert result["output_path"] == str(out)
    assert result["classes"] == classes
    assert result["generated_classes"] == classes
    saved = json.loads(out.read_text())
    assert set(saved) == set(classes) and all(saved[c] for c in classes)
    assert result["num_descriptions"] == sum(len(v) for v in saved.values())
    _check_server_saw_key(llm)
    payloads = [r["payload"] for r in llm.requests]
    assert {p["model"] for p in payloads} == {"fake-model"}
    assert {p["n"] for p in payloads} == {2}
    assert {p["temperature"] for p in payloads} == {0.5}
    assert all("a wild animal" in p for p in llm.prompts)
    assert API_KEY not in json.dumps(result)
    assert API_KEY not in out.read_text()
    assert all(API_KEY not in p.read_text() for p in tmp_path.iterdir())

    # cached: a second run asks for nothing
    before = len(llm.requests)
    again = _execute(ds, dict(classes=classes, output_path=str(out), base_url=llm.base_url))
    assert len(llm.requests) == before
    assert again["generated_classes"] == []
    assert again["num_descriptions"] == result["num_descriptions"]


def test_operator_classes_from_field_and_env_endpoint(llm, fo_dataset, tmp_path, monkeypatch):
    import fiftyone as fo

    monkeypatch.setenv("BIFTA_LLM_BASE_URL", llm.base_url)
    monkeypatch.setenv("BIFTA_LLM_MODEL", "env-model")
    ds = fo_dataset()
    ds.add_samples(
        [
            fo.Sample(filepath=f"/tmp/{i}.jpg", gt=fo.Classification(label=label))
            for i, label in enumerate(["cat", "dog", "cat", "horse"])
        ]
    )
    out = tmp_path / "field.json"
    result = _execute(
        ds,
        dict(
            classes_source="field",
            classes_field="gt",
            output_path=str(out),
            base_url="",  # empty: secrets / env
            model="",
            samples_per_prompt=1,
        ),
    )
    assert sorted(result["classes"]) == ["cat", "dog", "horse"]
    assert set(json.loads(out.read_text())) == {"cat", "dog", "horse"}
    assert {r["payload"]["model"] for r in llm.requests} == {"env-model"}
    _check_server_saw_key(llm)
    assert API_KEY not in json.dumps(result)


def test_operator_rejects_bad_output_path(llm, fo_dataset, tmp_path):
    import fiftyone.operators as foo

    ds = fo_dataset()
    from fiftyone.operators.executor import ExecutionContext

    from bifta_plugin.ui.describe_operator import GenerateDescriptions

    op = GenerateDescriptions()
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=ds.name,
            params=dict(classes=["cat"], output_path=str(tmp_path / "x.txt")),
        )
    )
    form = op.resolve_input(ctx)
    prop = form.type.get_property("output_path")
    assert prop.invalid and ".json" in prop.error_message
    assert not llm.requests
    assert foo.OperatorRegistry().list_errors() == []


def test_operator_delegated_records_progress(llm, fo_dataset, tmp_path):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    ds = fo_dataset()
    out = tmp_path / "delegated.json"
    queued = foo.execute_operator(
        URI,
        ctx=dict(
            dataset=ds.name,
            params=dict(
                classes=["cat", "dog"],
                output_path=str(out),
                base_url=llm.base_url,
                samples_per_prompt=1,
            ),
        ),
        request_delegation=True,
    )
    assert queued.delegated is True
    op_id = queued.result["id"]
    assert not out.exists() and not llm.requests
    dos = DelegatedOperationService()
    try:
        dos.execute_queued_operations(operator=URI, dataset_name=ds.name)
        doc = dos.get(op_id)
        assert doc.run_state == "completed", doc.result
        result = doc.result.result
        assert result["generated_classes"] == ["cat", "dog"]
        assert doc.status.progress == 1.0
        assert doc.status.label == "10/10 prompts"
        assert API_KEY not in json.dumps(result)
        assert API_KEY not in json.dumps(doc.context.request_params, default=str)
    finally:
        dos.delete_operation(op_id)
    assert set(json.loads(out.read_text())) == {"cat", "dog"}
    _check_server_saw_key(llm)


def test_operator_config_and_registry():
    import fiftyone.operators as foo

    registry = foo.OperatorRegistry()
    assert registry.list_errors() == []
    uris = {op.uri for op in registry.list_operators(builtin=False)}
    assert URI in uris
    cfg = foo.get_operator(URI).config
    assert cfg.dynamic
    assert cfg.allow_immediate_execution and cfg.allow_delegated_execution
    assert cfg.default_choice_to_delegated


def test_cli_describe(llm, tmp_path, capsys):
    from bifta_plugin.cli.commands import main

    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# pets\ncat\ndog\n")
    out = tmp_path / "cli.json"
    code = main(
        [
            "describe",
            "--classes-file", str(classes_file),
            "--output", str(out),
            "--base-url", llm.base_url,
            "--model", "cli-model",
            "--samples-per-prompt", "2",
            "--temperature", "0.7",
            "--prompt-context", "a pet",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Descriptions: 2/2 classes" in captured.out
    assert set(json.loads(out.read_text())) == {"cat", "dog"}
    assert {r["payload"]["model"] for r in llm.requests} == {"cli-model"}
    assert {r["payload"]["temperature"] for r in llm.requests} == {0.7}
    _check_server_saw_key(llm)
    assert API_KEY not in captured.out + captured.err


def test_cli_describe_has_no_api_key_flag(tmp_path, capsys):
    from bifta_plugin.cli.commands import main

    with pytest.raises(SystemExit):
        main(["describe", "--classes", "cat", "--output", str(tmp_path / "x.json"),
              "--api-key", "nope"])  # fmt: skip
    assert "unrecognized arguments" in capsys.readouterr().err


def test_cli_describe_server_error_is_exit_2(llm, tmp_path, capsys):
    from bifta_plugin.cli.commands import main

    llm.fail_when = lambda payload: dict(status=401, body={"error": {"message": "bad key"}})
    code = main(
        ["describe", "--classes", "cat", "--output", str(tmp_path / "e.json"),
         "--base-url", llm.base_url, "--samples-per-prompt", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:")
    assert API_KEY not in err


def test_cli_classify_generates_missing_first(llm, fo_dataset, sample_images, tiny_model_name, tmp_path, capsys):
    from bifta_plugin.cli.commands import main

    ds = fo_dataset(sample_images[:2])
    path = tmp_path / "desc.json"
    path.write_text(json.dumps({"cat": ["a cat with whiskers."]}))
    classes = ["cat", "astronaut"]
    args = [
        "classify", "--dataset", ds.name, "--classes", *classes,
        "--method", "wca", "--descriptions", str(path), "--generate-missing",
        "--llm-base-url", llm.base_url, "--llm-model", "cli-llm",
        "--llm-samples-per-prompt", "1",
        "--model", tiny_model_name, "--pretrained", "none", "--device", "cpu",
        "--num-candidates", "3", "--max-views", "3", "--label-field", "gen",
    ]  # fmt: skip
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Generating descriptions for 1 of 2 classes" in captured.out
    saved = json.loads(path.read_text())
    assert saved["cat"] == ["a cat with whiskers."] and saved["astronaut"]
    assert {r["payload"]["model"] for r in llm.requests} == {"cli-llm"}
    assert all("astronaut" in p for p in llm.prompts)
    ds.reload()
    assert set(ds.values("gen.label")) <= set(classes)
    _check_server_saw_key(llm)
    assert API_KEY not in captured.out + captured.err

    # the file is complete now: a second run asks nothing
    before = len(llm.requests)
    assert main(args + ["--overwrite"]) == 0
    assert len(llm.requests) == before


def test_cli_generate_missing_needs_a_descriptions_file(fo_dataset, capsys):
    from bifta_plugin.cli.commands import main

    ds = fo_dataset()
    code = main(["classify", "--dataset", ds.name, "--classes", "cat",
                 "--generate-missing"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--generate-missing needs --descriptions" in err


def _describe_form(ds, params):
    from fiftyone.operators.executor import ExecutionContext

    from bifta_plugin.ui.describe_operator import GenerateDescriptions

    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, params=params))
    return GenerateDescriptions().resolve_input(ctx).type.properties


def test_operator_form_shows_the_plan(llm, fo_dataset, tmp_path):
    ds = fo_dataset()
    out = tmp_path / "plan.json"
    out.write_text(json.dumps({"Red_Fox": ["a red fox."]}))
    params = dict(
        classes=["red fox", "barn owl"], output_path=str(out),
        base_url=llm.base_url, model="plan-model",
    )  # fmt: skip
    props = _describe_form(ds, params)
    plan = props["generation_plan"].view.label
    assert "1 of 2 classes will be generated (barn owl)" in plan
    assert "plan-model" in plan and "API key set" in plan and API_KEY not in plan

    out.write_text(json.dumps({"red fox": ["a."], "barn owl": ["b."]}))
    props = _describe_form(ds, params)
    assert "nothing will be asked" in props["generation_plan"].view.label

    out.write_text("{not json")
    props = _describe_form(ds, params)
    assert props["output_path"].invalid and "plan.json" in props["output_path"].error_message
    assert not llm.requests


def test_operator_refuses_openai_without_a_key(fo_dataset, tmp_path, monkeypatch):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    monkeypatch.delenv("BIFTA_LLM_API_KEY")
    ds = fo_dataset()
    params = dict(classes=["cat"], output_path=str(tmp_path / "k.json"))
    props = _describe_form(ds, params)
    assert props["base_url"].invalid
    assert "No API key for api.openai.com" in props["base_url"].error_message
    with pytest.raises(ExecutionError, match="No API key"):
        foo.execute_operator(URI, ctx=dict(dataset=ds.name, params=params))
    assert not (tmp_path / "k.json").exists()
