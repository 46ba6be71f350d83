"""The layout's import contract, checked in fresh interpreters.

Each case imports one module in a new Python process and asserts what did
*not* get imported along with it (``sys.modules``): the layers only depend
downwards (core <- engine <- sdk <- cli/ui), descriptions stay torch-free, and
plugin registration stays light.
"""

import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_PARENT = os.path.dirname(REPO_ROOT)



def _modules_after(code: str, cwd: str = REPO_ROOT) -> set:
    """Run ``code`` in a fresh interpreter; the names in its sys.modules."""
    script = code + "\nimport sys, json\nprint('@@' + json.dumps(sorted(sys.modules)))\n"
    env = dict(os.environ, PYTHONPATH=cwd)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("@@")][-1]
    return set(json.loads(line[2:]))


def _roots(mods) -> set:
    return {m.split(".")[0] for m in mods}


CORE_MODULES = ["config", "classnames", "boxes", "scoring", "text", "crops"]


@pytest.mark.parametrize("name", CORE_MODULES)
def test_core_imports_neither_fiftyone_nor_open_clip(name):
    mods = _modules_after(f"import bifta_plugin.core.{name}")
    assert not {"fiftyone", "open_clip", "bifta_plugin.engine", "bifta_plugin.sdk"} & (
        _roots(mods) | {m for m in mods if m.startswith("bifta_plugin.")}
    ), sorted(m for m in mods if m.startswith(("fiftyone", "open_clip", "bifta_plugin")))


@pytest.mark.parametrize("name", ["config", "classnames"])
def test_pure_python_core_modules_import_no_torch(name):
    assert "torch" not in _roots(_modules_after(f"import bifta_plugin.core.{name}"))


@pytest.mark.parametrize("name", ["files", "generation", "llm_client"])
def test_descriptions_import_no_torch_and_no_fiftyone(name):
    roots = _roots(_modules_after(f"import bifta_plugin.descriptions.{name}"))
    assert "torch" not in roots and "fiftyone" not in roots and "open_clip" not in roots


@pytest.mark.parametrize("name", ["encoders", "pipeline"])
def test_engine_imports_no_fiftyone(name):
    mods = _modules_after(f"import bifta_plugin.engine.{name}")
    assert "fiftyone" not in _roots(mods)
    assert not any(m.startswith("bifta_plugin.sdk") for m in mods)


def test_import_bifta_plugin_is_light():
    roots = _roots(_modules_after("import bifta_plugin"))
    assert "torch" not in roots and "fiftyone" not in roots and "open_clip" not in roots


def _all_library_modules():
    names = []
    base = os.path.join(REPO_ROOT, "bifta_plugin")
    for dirpath, _, files in os.walk(base):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), REPO_ROOT)[:-3]
                mod = rel.replace(os.sep, ".")
                if mod.endswith(".__init__"):
                    mod = mod[: -len(".__init__")]
                names.append(mod)
    return sorted(names)


def test_nothing_outside_ui_imports_ui():
    """Import every non-ui module (all at once): no ui module may come along."""
    outside = [m for m in _all_library_modules() if ".ui" not in m and not m.endswith("__main__")]
    mods = _modules_after("\n".join(f"import {m}" for m in outside))
    assert not [m for m in mods if m.startswith("bifta_plugin.ui")]


def test_plugin_registration_is_light():
    """The plugin root as FiftyOne imports it (a package whose name is not
    ``bifta_plugin``): no torch, no open_clip, and no FiftyOne module beyond
    what ``import fiftyone.operators`` (which every plugin needs) loads itself."""
    baseline = _modules_after("import fiftyone.operators, fiftyone.operators.types")
    # as fiftyone.plugins.context does: the root __init__.py loaded from its
    # file under a synthetic module name (importing it by its folder's name
    # breaks on a checkout in a folder with a dot, e.g. mktemp -d's tmp.XXXX)
    init = os.path.join(REPO_ROOT, "__init__.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('bifta_plugin_root_check', {init!r})\n"
        "m = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = m\n"
        "spec.loader.exec_module(m)\n"
        "assert callable(m.register)\n"
    )
    mods = _modules_after(code, cwd=PLUGIN_PARENT)
    roots = _roots(mods)
    assert "torch" not in roots and "open_clip" not in roots
    extra = sorted(m for m in mods - baseline if m.startswith("fiftyone"))
    assert not extra, extra
    assert not [m for m in mods if ".bifta_plugin.engine" in m]
