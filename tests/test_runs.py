"""runs.py: BiFTA runs are registered, listed, described, loaded and deleted."""

import json

import pytest

from bifta_plugin import __version__
from bifta_plugin.sdk import run as api, records as runs
from bifta_plugin.core.config import get_config
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions

CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {
    "cat": ["a cat with whiskers"],
    "astronaut": ["a person in a space suit"],
    "coffee": ["a cup of coffee"],
}
FAST = dict(num_candidates=8, max_views=8, runtime=RunOptions(num_workers=0))


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


@pytest.fixture
def two_runs(fo_dataset, sample_images, encoder):
    """A dataset with run "first" (bifta -> field "a", evaluated) and run
    "second" (clip -> field "b")."""
    ds = fo_dataset(sample_images[:2])
    api.run_bifta(
        ds, CLASSES, DESCRIPTIONS,
        output=OutputSpec("a", run_key="first", gt_field="ground_truth"),
        encoder=EncoderSpec(instance=encoder), **FAST,
    )
    api.run_bifta(ds, CLASSES, output=OutputSpec("b", run_key="second"), method="clip",
                  encoder=EncoderSpec(instance=encoder), runtime=RunOptions(num_workers=0))
    return ds


def test_list_and_latest(two_runs):
    ds = two_runs
    ds.register_run("not_ours", ds.init_run(tool="other"))
    assert runs.list_bifta_runs(ds) == ["first", "second"]
    assert runs.latest_bifta_run(ds) == "second"
    assert runs.is_bifta_run(ds, "first") and not runs.is_bifta_run(ds, "not_ours")
    assert not runs.is_bifta_run(ds, "missing")
    assert ds.list_runs(run_type="bifta") == ["first", "second"]
    assert ds.list_runs(method="clip") == ["second"]


def test_no_runs(fo_dataset):
    ds = fo_dataset()
    assert runs.list_bifta_runs(ds) == []
    assert runs.latest_bifta_run(ds) is None


def test_run_info_carries_the_provenance(two_runs):
    info = runs.get_bifta_run_info(two_runs, "first")
    json.dumps(info)  # plain JSON
    assert info["type"] == "bifta" and info["key"] == "first"
    assert info["method"] == "bifta"
    assert info["label_field"] == "a"
    assert info["fields"] == {"label": "a", "crops": "a_crops", "scores": "a_scores", "error": "a_error", "best_crop": "a_best_crop"}
    assert info["classes"] == CLASSES
    assert info["class_fields"] == ["cat", "astronaut", "coffee"]
    assert info["model_name"] == "bifta-tiny-test" and info["pretrained"] is None
    assert info["model_identity"].startswith("open_clip:bifta-tiny-test:random")
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["crop_mode"] == "exact"
    assert info["descriptions"]["source"] == "inline"
    assert len(info["descriptions"]["sha256"]) == 64
    assert info["config"] == get_config("bifta", num_candidates=8, max_views=8).to_dict()
    assert info["package_version"] == __version__
    assert info["timestamp"] and info["registered_at"] and info["fiftyone_version"]
    assert info["status"] == "completed"
    results = info["results"]
    assert (results["num_samples"], results["num_processed"], results["num_failed"]) == (2, 2, 0)
    assert info["gt_field"] == "ground_truth" and info["eval_key"] == "eval_first"
    assert results["accuracy"] is not None

    clip = runs.get_bifta_run_info(two_runs, "second")
    assert clip["descriptions"] is None and "crops" not in clip["fields"]
    assert clip["eval_key"] is None


def test_load_config(two_runs):
    assert runs.load_bifta_config(two_runs, "first") == get_config(
        "bifta", num_candidates=8, max_views=8
    )
    assert runs.load_bifta_config(two_runs, "second").method == "clip"


def test_fields_of_a_run(two_runs):
    assert runs.bifta_runs_for_field(two_runs, "a_crops") == ["first"]
    assert runs.bifta_runs_for_field(two_runs, "b") == ["second"]
    assert runs.bifta_runs_for_field(two_runs, "ground_truth") == []


def test_delete_run_with_fields_and_evaluation(two_runs):
    ds = two_runs
    deleted = runs.delete_bifta_run(ds, "first")
    assert sorted(deleted) == ["a", "a_best_crop", "a_crops", "a_error", "a_scores"]
    schema = ds.get_field_schema()
    assert not any(name.startswith("a") for name in schema if name != "astronaut")
    assert "eval_first" not in schema and ds.list_evaluations() == []
    assert runs.list_bifta_runs(ds) == ["second"]
    assert "b" in schema and ds.count("b") == 2  # the other run is untouched
    assert "ground_truth" in schema


def test_delete_run_keeping_fields(two_runs):
    deleted = runs.delete_bifta_run(two_runs, "second", delete_fields=False)
    assert deleted == []
    assert two_runs.count("b") == 2
    assert runs.list_bifta_runs(two_runs) == ["first"]


def test_unknown_run_raises(two_runs):
    two_runs.register_run("other", two_runs.init_run(tool="other"))
    for key in ("other", "missing"):
        with pytest.raises(ValueError, match="not a BiFTA run"):
            runs.get_bifta_run_info(two_runs, key)
        with pytest.raises(ValueError, match="not a BiFTA run"):
            runs.delete_bifta_run(two_runs, key)


def test_update_run(two_runs):
    runs.update_bifta_run(two_runs, "second", status="interrupted", note={"x": 1})
    info = runs.get_bifta_run_info(two_runs, "second")
    assert info["status"] == "interrupted" and info["note"] == {"x": 1}
    assert info["method"] == "clip" and info["classes"] == CLASSES


def _group_names(ds):
    return [g.name for g in ds.app_config.sidebar_groups or []]


def test_latest_scores_group_leads_the_sidebar(two_runs):
    """The latest run's scores group comes right after the tags, expanded;
    the earlier run's is collapsed; no path is in two groups."""
    groups = two_runs.app_config.sidebar_groups
    names = _group_names(two_runs)
    assert names[:2] == ["tags", "b_scores"], names
    by_name = {g.name: g for g in groups}
    assert by_name["b_scores"].expanded is True
    assert sorted(by_name["b_scores"].paths) == sorted(f"b_scores.{c}" for c in CLASSES)
    assert by_name["a_scores"].expanded is False
    paths = [p for g in groups for p in g.paths]
    assert len(paths) == len(set(paths))
    assert "labels" in names and "metadata" in names  # FiftyOne's own groups kept


def test_deleting_a_run_removes_its_scores_group(two_runs):
    runs.delete_bifta_run(two_runs, "second")
    names = _group_names(two_runs)
    assert "b_scores" not in names and "a_scores" in names
    assert all(g.paths or g.name in ("metadata", "primitives", "other")
               for g in two_runs.app_config.sidebar_groups)
