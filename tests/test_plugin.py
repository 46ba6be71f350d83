"""The plugin loads through FiftyOne's real plugin registry, cheaply."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.fiftyone

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "@bifta/bifta"
OPERATORS = ("run_bifta", "get_bifta_run_info", "delete_bifta_run")


def test_manifest_lists_what_register_registers():
    import yaml

    with open(os.path.join(REPO_ROOT, "fiftyone.yml")) as f:
        manifest = yaml.safe_load(f)
    assert manifest["name"] == PLUGIN
    assert set(OPERATORS) <= set(manifest["operators"])
    assert manifest["fiftyone"]["version"] == ">=1.22,<2"
    assert {
        "BIFTA_LLM_API_KEY",
        "BIFTA_LLM_BASE_URL",
        "BIFTA_LLM_MODEL",
    } <= set(manifest["secrets"])
    assert os.path.isfile(os.path.join(REPO_ROOT, "assets", "icon.svg"))


def test_registry_loads_plugin_without_errors():
    import fiftyone.operators as foo
    import fiftyone.plugins as fop

    names = [p.name for p in fop.list_plugins()]
    assert PLUGIN in names
    registry = foo.OperatorRegistry()
    assert registry.list_errors() == []
    uris = {op.uri for op in registry.list_operators(builtin=False)}
    for name in OPERATORS:
        assert f"{PLUGIN}/{name}" in uris
    op = foo.get_operator(f"{PLUGIN}/run_bifta")
    cfg = op.config
    assert cfg.dynamic and cfg.execute_as_generator
    assert cfg.allow_immediate_execution and cfg.allow_delegated_execution
    assert cfg.default_choice_to_delegated


def test_panels_in_manifest_are_registered():
    import yaml
    import fiftyone.operators as foo

    with open(os.path.join(REPO_ROOT, "fiftyone.yml")) as f:
        panels = yaml.safe_load(f).get("panels") or []
    registry = foo.OperatorRegistry()
    uris = {op.uri for op in registry.list_operators(builtin=False)}
    for name in panels:
        assert f"{PLUGIN}/{name}" in uris


_NO_TORCH_SCRIPT = r"""
import json, sys
import fiftyone.operators as foo
registry = foo.OperatorRegistry()
uris = sorted(op.uri for op in registry.list_operators(builtin=False))
op = foo.get_operator("@bifta/bifta/run_bifta")
heavy = sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules)
print(json.dumps({"uris": uris, "errors": registry.list_errors(), "heavy": heavy}))
"""


def _fresh_interpreter_report(script: str, cwd=None) -> dict:
    """Run ``script`` in a fresh interpreter with the test session's
    environment (plugins dir, database); its last stdout line is JSON."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_registration_imports_no_torch():
    report = _fresh_interpreter_report(_NO_TORCH_SCRIPT)
    assert report["errors"] == []
    assert f"{PLUGIN}/run_bifta" in report["uris"]
    assert (
        report["heavy"] == []
    ), f"plugin registration imported {report['heavy']}"


_FORM_HELPERS_SCRIPT = r"""
import json, sys, tempfile, os
from bifta_plugin.descriptions import files as descriptions, generation
from bifta_plugin.ui import llm, run_form, run_execution, describe_operator
path = os.path.join(tempfile.mkdtemp(), "d.json")
with open(path, "w") as f:
    json.dump({"cat": ["a cat."]}, f)
loaded = descriptions.load_descriptions(path, ["cat", "dog"])
todo = generation.classes_to_generate(["cat", "dog"], path)
heavy = sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules)
print(json.dumps({"missing": loaded.missing_classes(), "todo": todo, "heavy": heavy}))
"""


def test_form_helpers_import_no_torch():
    """What the forms use on every change (description files, the generation
    plan) stays pure Python: no torch in the App server for a form."""
    report = _fresh_interpreter_report(_FORM_HELPERS_SCRIPT, cwd=REPO_ROOT)
    assert report["missing"] == ["dog"] and report["todo"] == ["dog"]
    assert report["heavy"] == [], f"form helpers imported {report['heavy']}"
