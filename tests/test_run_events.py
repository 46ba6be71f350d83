"""The generator-shaped run (iter_bifta) and the plan (make_plan), against a
real (test) MongoDB with the tiny random model."""

import dataclasses

import pytest

from bifta_plugin.core.progress import ProgressEvent
from bifta_plugin.sdk import records as runs
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions, TargetSpec, split_options
from bifta_plugin.sdk.plan import make_plan
from bifta_plugin.sdk.results import RunResult
from bifta_plugin.sdk.run import iter_bifta, run_bifta

CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {
    "cat": ["a cat with whiskers", "a small furry pet"],
    "astronaut": ["a person in a space suit"],
    "coffee": ["a cup of coffee"],
}
FAST = dict(num_candidates=4, max_views=4)


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return EncoderSpec(instance=create_encoder(tiny_model_name, None, device="cpu", cache_dir=False))


def _iter(ds, encoder, batch_size=2, **kwargs):
    return iter_bifta(
        ds, CLASSES, DESCRIPTIONS, encoder=encoder,
        runtime=RunOptions(batch_size=batch_size, num_workers=0, **kwargs), **FAST,
    )


def test_events_come_between_batches_then_the_result(fo_dataset, sample_images, encoder):
    ds = fo_dataset(sample_images[:5])
    events = _iter(ds, encoder)
    seen = []
    for event in events:
        assert isinstance(event, ProgressEvent)
        # each event follows a written batch: the dataset already holds it
        seen.append((event.phase, event.done, event.total, ds.count("bifta")))
    assert seen[0] == ("setup", 0, 5, 0)
    assert seen[1:4] == [("classify", 2, 5, 2), ("classify", 4, 5, 4), ("classify", 5, 5, 5)]
    assert seen[4][0] == "done" and len(seen) == 5
    assert event.message.startswith("BiFTA run 'bifta'")
    assert isinstance(event.result, RunResult) and event.result.num_processed == 5
    assert runs.get_bifta_run_info(ds, "bifta")["status"] == "completed"


def test_closing_the_iterator_records_interrupted_and_resumes(fo_dataset, sample_images, encoder):
    ds = fo_dataset(sample_images[:5])
    events = _iter(ds, encoder)
    assert next(events).phase == "setup"
    assert next(events).done == 2
    events.close()  # cancellation: GeneratorExit at the event after batch 1

    info = runs.get_bifta_run_info(ds, "bifta")
    assert info["status"] == "interrupted"
    assert info["results"]["num_processed"] == 2
    assert info["results"]["error"] == "cancelled"
    assert ds.count("bifta") == 2  # the finished batch is kept

    result = run_bifta(
        ds, CLASSES, DESCRIPTIONS, encoder=encoder,
        runtime=RunOptions(batch_size=2, num_workers=0, skip_existing=True), **FAST,
    )
    assert (result.num_processed, result.num_skipped) == (3, 2)
    assert ds.count("bifta") == 5
    assert runs.get_bifta_run_info(ds, "bifta")["status"] == "completed"


def test_a_failure_while_iterating_is_recorded_as_failed(fo_dataset, sample_images, corrupt_image, encoder):
    ds = fo_dataset([sample_images[0], (corrupt_image, "cat"), sample_images[1]])
    events = _iter(ds, encoder, batch_size=1, skip_failures=False)
    with pytest.raises(Exception, match="failed"):
        list(events)
    assert runs.get_bifta_run_info(ds, "bifta")["status"] == "failed"


def test_arguments_are_checked_when_called_not_when_iterated(fo_dataset, sample_images, encoder):
    ds = fo_dataset(sample_images[:2])
    with pytest.raises(ValueError, match="batch_size"):
        _iter(ds, encoder, batch_size=0)
    with pytest.raises(ValueError, match="EncoderSpec"):
        iter_bifta(ds, CLASSES, DESCRIPTIONS, encoder="ViT-B-32")
    assert "bifta" not in ds.get_field_schema() and not ds.list_runs()
    # a valid call writes nothing until iterated
    events = _iter(ds, encoder)
    assert not ds.list_runs()
    events.close()
    assert not ds.list_runs()


# --- the plan ---------------------------------------------------------------------------
def test_plan_lists_what_overwrite_deletes_and_deletes_nothing(fo_dataset, sample_images):
    ds = fo_dataset(sample_images[:3], label_field="bifta")  # the user's own field
    ds.set_values("bifta_error", [1, 2, 3])  # of another type
    ds.register_run("other", ds.init_run(tool="something else"))
    snapshot = (sorted(ds.get_field_schema(flat=True)), ds.list_runs())

    plan = make_plan(ds, CLASSES, DESCRIPTIONS, output=OutputSpec(run_key="other"))
    assert plan.deletions.fields == {"bifta", "bifta_error"}
    assert plan.deletions.runs == {"other"}
    assert plan.deletions.evaluations == frozenset()
    text = plan.deletions.summary()
    assert "run key 'other' is taken by a run that is not a BiFTA run" in text
    assert "field 'bifta_error' already exists" in text and "incompatible type IntField" in text
    assert "overwrite=True deletes fields: bifta, bifta_error; runs: other" in text
    assert (sorted(ds.get_field_schema(flat=True)), ds.list_runs()) == snapshot

    with pytest.raises(ValueError, match="not a BiFTA run.*bifta_error.*overwrite=True"):
        plan.require_allowed()
    allowed = make_plan(ds, CLASSES, DESCRIPTIONS, output=OutputSpec(run_key="other"), overwrite=True)
    assert allowed.require_allowed() is allowed
    assert (sorted(ds.get_field_schema(flat=True)), ds.list_runs()) == snapshot


def test_plan_of_a_clean_dataset_and_evaluation_conflicts(fo_dataset, sample_images, encoder):
    ds = fo_dataset(sample_images[:2])
    plan = make_plan(ds, CLASSES, DESCRIPTIONS, output=OutputSpec("p", gt_field="ground_truth"))
    assert not plan.deletions and plan.deletions.summary() == "nothing to delete"
    assert plan.output.run_key == "p" and plan.output.eval_key == "eval_p"
    assert plan.fields == {"label": "p", "crops": "p_crops", "scores": "p_scores", "error": "p_error"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.overwrite = True

    ds.evaluate_classifications("ground_truth", gt_field="ground_truth", eval_key="eval_p")
    plan = make_plan(ds, CLASSES, DESCRIPTIONS, output=OutputSpec("p", gt_field="ground_truth"))
    assert plan.deletions.evaluations == {"eval_p"}
    assert "evaluation 'eval_p' already exists for other fields" in plan.deletions.summary()


def test_the_same_run_key_with_another_config_is_found_once_the_encoder_is_built(
    fo_dataset, sample_images, encoder
):
    ds = fo_dataset(sample_images[:2])
    run_bifta(ds, CLASSES, DESCRIPTIONS, encoder=encoder, runtime=RunOptions(num_workers=0), **FAST)
    # a rerun with the same config: nothing to delete
    assert not make_plan(ds, CLASSES, DESCRIPTIONS, config_overrides=FAST).deletions
    events = iter_bifta(
        ds, CLASSES, DESCRIPTIONS, encoder=encoder, num_candidates=5, max_views=4,
        runtime=RunOptions(num_workers=0),
    )
    with pytest.raises(ValueError, match="different configuration"):
        next(events)
    assert runs.load_bifta_config(ds, "bifta").num_candidates == 4


def test_split_options_groups_flat_params():
    kwargs = split_options(
        dict(label_field="p", batch_size=4, model_name="RN50", classes=["a"], num_candidates=3)
    )
    assert kwargs == dict(
        classes=["a"],
        num_candidates=3,
        encoder=EncoderSpec(model_name="RN50"),
        runtime=RunOptions(batch_size=4),
        output=OutputSpec(label_field="p"),
        target=TargetSpec(),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        kwargs["runtime"].batch_size = 8


def test_option_names_are_unique_and_never_config_fields():
    from bifta_plugin.core.config import BiftaConfig
    from bifta_plugin.sdk.options import GROUPS, option_names

    names = [n for group in GROUPS.values() for n in option_names(group)]
    assert len(names) == len(set(names))
    config_fields = {f.name for f in dataclasses.fields(BiftaConfig)}
    assert not set(names) & config_fields  # split_options never takes an override


def test_encoder_spec_model_config_must_exist(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        EncoderSpec("my-arch", None, model_config=tmp_path / "my-arch.json").build()
