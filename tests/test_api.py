"""api.run_bifta against a real (test) MongoDB, with the tiny random model."""

import subprocess
import sys

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.core.sample as fos
from fiftyone import ViewField as F

from bifta_plugin.sdk import run as api, records as runs
from bifta_plugin.core.methods import get_method
from bifta_plugin.sdk.labels import safe_field_names
from bifta_plugin.sdk.options import split_options
from bifta_plugin.sdk.results import SampleFailedError

CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {
    "cat": ["a cat with whiskers", "a small furry pet"],
    "astronaut": ["a person in a space suit", "an astronaut with a helmet"],
    "coffee": ["a cup of coffee", "a hot drink in a mug"],
}
FAST = dict(num_workers=0, batch_size=2)
CROPS = dict(num_candidates=8, max_views=8)  # for the crop methods only


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


@pytest.fixture
def photos(sample_images):
    """cat.jpg, astronaut.png, coffee.jpg with their labels."""
    return sample_images[:3]


def _run(ds, encoder, **kwargs):
    """run_bifta with flat settings grouped into its option groups."""
    args = dict(FAST, instance=encoder)
    if get_method(kwargs.get("method", "bifta")).uses_crops:
        args.update(CROPS)
    args.update(kwargs)
    classes = args.pop("classes", CLASSES)
    descriptions = args.pop("descriptions", DESCRIPTIONS)
    return api.run_bifta(ds, classes, descriptions, **split_options(args))


def _schema_snapshot(ds):
    return sorted(ds.get_field_schema(flat=True)), ds.list_runs(), ds.list_evaluations()


# --- the fields of the contract ------------------------------------------------------
def test_writes_every_field(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    result = _run(ds, encoder)

    assert (result.num_samples, result.num_processed, result.num_failed) == (3, 3, 0)
    assert result.fields == {
        "label": "bifta",
        "crops": "bifta_crops",
        "scores": "bifta_scores",
        "error": "bifta_error",
    }
    schema = ds.get_field_schema()
    assert schema["bifta"].document_type is fo.Classification
    assert schema["bifta_crops"].document_type is fo.Detections
    assert schema["bifta_scores"].document_type is fo.DynamicEmbeddedDocument
    assert isinstance(schema["bifta_error"], fo.StringField)
    assert "bifta_topk" not in schema
    flat = ds.get_field_schema(flat=True)
    for name in ("bifta.margin", "bifta.score", "bifta_crops.detections.best"):
        assert name in flat
    for name in safe_field_names(CLASSES).values():
        assert isinstance(flat[f"bifta_scores.{name}"], fo.FloatField)

    for sample in ds:
        pred = sample.bifta
        assert pred.label in CLASSES
        assert len(pred.logits) == len(CLASSES)
        assert 0 < pred.confidence <= 1 and 0 <= pred.margin <= 1
        probs = [sample.bifta_scores[c] for c in CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-5)
        assert pred.confidence == pytest.approx(max(probs))
        assert CLASSES[int(np.argmax(pred.logits))] == pred.label
        dets = sample.bifta_crops.detections
        assert 1 <= len(dets) <= 8
        boxes = np.array([d.bounding_box for d in dets])
        assert boxes.min() >= 0 and (boxes[:, :2] + boxes[:, 2:]).max() <= 1 + 1e-9
        assert sum(d.best for d in dets) == 1
        best = next(d for d in dets if d.best)
        assert best.label == "best" and best.description in DESCRIPTIONS[pred.label]
        assert sample.bifta_error is None


def test_per_class_scores_are_filterable(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    _run(ds, encoder)
    values = ds.values("bifta_scores.cat")
    threshold = float(np.median(values))
    expected = sum(v > threshold for v in values)
    assert ds.match(F("bifta_scores.cat") > threshold).count() == expected
    assert ds.match(F("bifta_scores.cat") > 0.0).count() == 3
    assert ds.bounds("bifta_scores.coffee")[1] <= 1.0


def test_topk_above_the_cap(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    result = _run(ds, encoder, max_class_fields=2, top_k=2)
    assert "topk" in result.fields and "scores" not in result.fields
    schema = ds.get_field_schema()
    assert schema["bifta_topk"].document_type is fo.Classifications
    assert "bifta_scores" not in schema
    for sample in ds:
        top = sample.bifta_topk.classifications
        assert len(top) == 2
        assert top[0].label == sample.bifta.label
        assert top[0].confidence >= top[1].confidence
    info = runs.get_bifta_run_info(ds, "bifta")
    assert info["class_fields"] is None and info["fields"]["topk"] == "bifta_topk"


@pytest.mark.parametrize("method", ["clip", "wca"])
def test_other_methods(fo_dataset, photos, encoder, method):
    ds = fo_dataset(photos)
    descriptions = None if method == "clip" else DESCRIPTIONS
    result = _run(ds, encoder, method=method, descriptions=descriptions, label_field=method)
    assert result.num_processed == 3
    schema = ds.get_field_schema()
    assert (f"{method}_crops" in schema) == (method == "wca")
    assert len(ds.values(f"{method}.label")) == 3


def test_only_the_target_view_is_written(fo_dataset, sample_images, encoder):
    ds = fo_dataset(sample_images[:4])
    result = _run(ds.skip(1).limit(2), encoder)
    assert result.num_samples == 2
    assert [x is not None for x in ds.values("bifta")] == [False, True, True, False]


def test_classes_from_a_field(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    result = api.run_bifta(
        ds, classes_field="ground_truth", method="clip", **split_options(dict(FAST, instance=encoder))
    )
    assert runs.get_bifta_run_info(ds, result.run_key)["classes"] == sorted(CLASSES)


def test_progress_callable_gets_the_progress_bar(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    seen = []
    _run(ds, encoder, progress=lambda pb: seen.append(pb.progress))
    assert seen and seen[-1] == pytest.approx(1.0)


def test_writes_in_bulk_not_per_sample(fo_dataset, photos, encoder, monkeypatch):
    ds = fo_dataset(photos)

    def no_save(self, *args, **kwargs):
        raise AssertionError("Sample.save called: writes must be bulk")

    monkeypatch.setattr(fos.Sample, "save", no_save)
    result = _run(ds, encoder)
    assert result.num_processed == 3
    assert ds.count("bifta") == 3


# --- failures ----------------------------------------------------------------
def test_corrupt_image_is_recorded_and_skipped(fo_dataset, photos, corrupt_image, encoder):
    ds = fo_dataset([photos[0], (corrupt_image, "cat"), photos[1]])
    result = _run(ds, encoder)
    assert (result.num_processed, result.num_failed) == (2, 1)
    bad = ds.match(F("filepath") == corrupt_image).first()
    assert result.failures == [(bad.id, bad.bifta_error)]
    assert "cannot read image" in bad.bifta_error
    assert bad.bifta is None and bad.bifta_crops is None and bad.bifta_scores is None
    assert ds.exists("bifta_error").count() == 1
    assert ds.exists("bifta").count() == 2


def test_skip_failures_false_raises_after_saving(fo_dataset, photos, corrupt_image, encoder):
    ds = fo_dataset([photos[0], (corrupt_image, "cat"), photos[1]])
    with pytest.raises(SampleFailedError) as info:
        _run(ds, encoder, batch_size=1, skip_failures=False)
    assert info.value.filepath == corrupt_image
    assert [x is not None for x in ds.values("bifta")] == [True, False, False]
    assert ds.values("bifta_error")[1] is not None
    assert runs.get_bifta_run_info(ds, "bifta")["status"] == "failed"

    # resume: only the never-attempted sample is processed
    result = _run(ds, encoder, batch_size=1, skip_existing=True)
    assert (result.num_processed, result.num_skipped, result.num_failed) == (1, 2, 0)
    assert runs.get_bifta_run_info(ds, "bifta")["status"] == "completed"


# --- resuming and re-running ----------------------------------------------------------
def test_skip_existing_resumes(fo_dataset, sample_images, encoder):
    ds = fo_dataset(sample_images[:4])
    _run(ds.limit(2), encoder)
    first_ids = ds.values("bifta.id")[:2]

    calls = []
    original = encoder.encode_images

    def counting(pixels):
        calls.append(pixels.shape[0])
        return original(pixels)

    encoder.encode_images = counting
    try:
        result = _run(ds, encoder, skip_existing=True)
    finally:
        del encoder.encode_images
    assert (result.num_processed, result.num_skipped) == (2, 2)
    assert ds.values("bifta.id")[:2] == first_ids  # untouched
    assert ds.count("bifta") == 4
    # 2 images x (1 global + <= 8 crops) views
    assert 2 * 2 <= sum(calls) <= 2 * 9


def test_interrupted_run_keeps_its_batches_and_resumes(fo_dataset, sample_images, encoder):
    ds = fo_dataset(sample_images[:4])

    def interrupt(pb):
        if pb.iteration >= 2:  # after the first batch of 2 was written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(ds, encoder, progress=interrupt)
    assert ds.count("bifta") == 2
    info = runs.get_bifta_run_info(ds, "bifta")
    assert info["status"] == "interrupted"
    assert info["results"]["num_processed"] == 2

    result = _run(ds, encoder, skip_existing=True)
    assert (result.num_processed, result.num_skipped) == (2, 2)
    assert ds.count("bifta") == 4
    assert runs.get_bifta_run_info(ds, "bifta")["status"] == "completed"


def test_rerun_with_the_same_config_is_allowed(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    first = ds.values("id")
    _run(ds, encoder)
    labels = ds.values("bifta.label")
    result = _run(ds, encoder)
    assert result.num_processed == 3
    assert ds.values("bifta.label") == labels
    assert ds.values("id") == first
    assert runs.list_bifta_runs(ds) == ["bifta"]


def test_other_config_under_the_same_key_needs_overwrite(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    _run(ds, encoder)
    for kwargs in ({}, {"skip_existing": True}):
        with pytest.raises(ValueError, match="different configuration"):
            _run(ds, encoder, num_candidates=9, **kwargs)
    assert runs.load_bifta_config(ds, "bifta").num_candidates == 8
    _run(ds, encoder, num_candidates=9, overwrite=True)
    assert runs.load_bifta_config(ds, "bifta").num_candidates == 9


# --- never clobber a field the user did not name --------------------------------------
def test_refuses_a_foreign_label_field(fo_dataset, photos, encoder):
    ds = fo_dataset(photos, label_field="bifta")  # the user's own field
    before = ds.values("bifta.label")
    snapshot = _schema_snapshot(ds)
    with pytest.raises(ValueError, match="already exists"):
        _run(ds, encoder)
    assert ds.values("bifta.label") == before
    assert _schema_snapshot(ds) == snapshot

    _run(ds, encoder, overwrite=True)
    assert ds.count("bifta_crops") == 3
    assert runs.list_bifta_runs(ds) == ["bifta"]


def test_refuses_a_derived_field_of_another_type(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    ds.set_values("bifta_crops", ["mine"] * 3)
    snapshot = _schema_snapshot(ds)
    with pytest.raises(ValueError, match="bifta_crops.*incompatible"):
        _run(ds, encoder)
    assert ds.values("bifta_crops") == ["mine"] * 3
    assert _schema_snapshot(ds) == snapshot
    _run(ds, encoder, overwrite=True)
    assert ds.get_field_schema()["bifta_crops"].document_type is fo.Detections


def test_refuses_a_field_written_by_another_run(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    _run(ds, encoder, run_key="first")
    with pytest.raises(ValueError, match="first"):
        _run(ds, encoder, run_key="second")
    _run(ds, encoder, run_key="second", overwrite=True)
    assert runs.list_bifta_runs(ds) == ["second"]


def test_refuses_a_run_key_of_another_tool(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    ds.register_run("bifta", ds.init_run(tool="something else"))
    with pytest.raises(ValueError, match="not a BiFTA run"):
        _run(ds, encoder)
    assert "bifta" not in ds.get_field_schema()


# --- validation: clear errors, nothing written ----------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(label_field="_hidden"), "invalid label_field"),
        (dict(label_field="a.b"), "invalid label_field"),
        (dict(label_field="a$b"), "invalid label_field"),
        (dict(label_field="my-preds"), "invalid label_field 'my-preds'"),
        (dict(run_key="bad key"), "run_key"),
        (dict(no_such_option=1), "Unknown config option"),
        (dict(method="nope"), "Unknown method"),
        (dict(descriptions=None), "needs class descriptions"),
        (dict(descriptions={"cat": ["x"]}), "no descriptions"),
        (dict(classes=[]), "classes is empty"),
        (dict(classes=None), "pass classes"),
        (dict(classes_field="ground_truth"), "not both"),
        (dict(gt_field="nope"), "does not exist"),
        (dict(gt_field="filepath"), "must be a Classification field"),
        (dict(eval_key="e"), "needs gt_field"),
        (dict(gt_field="ground_truth", eval_key="not valid"), "eval_key"),
        (dict(batch_size=0), "batch_size"),
        (dict(crop_mode="sideways"), "crop_mode"),
        (dict(max_class_fields=-1), "max_class_fields"),
        (dict(top_k=0), "top_k"),
    ],
)
def test_bad_arguments_raise_before_writing(fo_dataset, photos, encoder, kwargs, match):
    ds = fo_dataset(photos)
    snapshot = _schema_snapshot(ds)
    with pytest.raises(ValueError, match=match):
        _run(ds, encoder, **kwargs)
    assert _schema_snapshot(ds) == snapshot


def test_a_patches_view_classifies_its_objects(fo_dataset, photos, encoder):
    """A to_patches() view is a patches run on its field (tests/test_patches.py)."""
    ds = fo_dataset(photos)
    _run(ds, encoder)
    result = _run(ds.to_patches("bifta_crops").limit(5), encoder, label_field="p")
    assert result.unit == "objects" and result.num_samples == 5
    assert ds.count("bifta_crops.detections.p") == 5


# --- evaluation ------------------------------------------------------------------
def test_evaluation_with_a_gt_field(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    result = _run(ds, encoder, gt_field="ground_truth")
    assert result.eval_key == "eval_bifta"
    assert ds.list_evaluations() == ["eval_bifta"]
    correct = ds.values("eval_bifta")
    assert result.accuracy == pytest.approx(np.mean(correct))
    assert result.num_evaluated == 3
    expected = np.mean([p == g for p, g in zip(ds.values("bifta.label"), ds.values("ground_truth.label"))])
    assert result.accuracy == pytest.approx(expected)
    info = runs.get_bifta_run_info(ds, "bifta")
    assert info["eval_key"] == "eval_bifta" and info["gt_field"] == "ground_truth"
    assert info["results"]["accuracy"] == pytest.approx(result.accuracy)

    # re-running re-evaluates under the same key
    again = _run(ds, encoder, gt_field="ground_truth")
    assert again.accuracy == pytest.approx(result.accuracy)
    assert ds.list_evaluations() == ["eval_bifta"]


def test_resample_protocol_reports_per_run_accuracy(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    result = _run(
        ds, encoder, gt_field="ground_truth", protocol="resample", num_runs=3, num_draws=4
    )
    run_labels = ds.values("bifta.run_labels")
    assert all(len(r) == 3 and set(r) <= set(CLASSES) for r in run_labels)
    truth = ds.values("ground_truth.label")
    per_run = np.array([[r[i] == t for i in range(3)] for r, t in zip(run_labels, truth)]).mean(0)
    assert result.accuracy_runs_mean == pytest.approx(per_run.mean())
    assert result.accuracy_runs_std == pytest.approx(per_run.std(ddof=0))


# --- the result object and the package surface ------------------------------------
def test_run_result_is_json_friendly(fo_dataset, photos, corrupt_image, encoder):
    import json

    ds = fo_dataset([photos[0], (corrupt_image, None)])
    result = _run(ds, encoder)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["num_failed"] == 1 and d["failures"][0][0] == ds.values("id")[1]
    assert d["crop_mode"] == "exact" and d["device"] == "cpu"
    assert result.images_per_s > 0 and result.elapsed_s > 0
    assert "1 failed of 2" in result.summary()


def test_import_is_lazy():
    code = (
        "import sys, bifta_plugin\n"
        "assert 'fiftyone' not in sys.modules and 'torch' not in sys.modules\n"
        "assert {'run_bifta', 'BiftaModel', 'list_bifta_runs'} <= set(dir(bifta_plugin))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_lazy_names_resolve():
    import bifta_plugin
    from bifta_plugin.sdk import model

    assert bifta_plugin.run_bifta is api.run_bifta
    assert bifta_plugin.BiftaModel is model.BiftaModel
    assert bifta_plugin.delete_bifta_run is runs.delete_bifta_run
    with pytest.raises(AttributeError):
        bifta_plugin.no_such_name


def test_result_reports_description_refinement(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    result = _run(ds, encoder, max_descriptions=1)  # the cap keeps the first only
    assert result.descriptions_kept == [
        dict(label=c, candidates=2, kept=1) for c in CLASSES
    ]
    assert "Descriptions kept: 3 of 6 (per class min 1, median 1, max 1)" in result.summary()
    info = runs.get_bifta_run_info(ds, "bifta")
    assert info["descriptions_kept"] == result.descriptions_kept

    clip = _run(fo_dataset(photos), encoder, method="clip", descriptions=None)
    assert clip.descriptions_kept is None and "kept" not in clip.summary()


def test_result_and_run_carry_the_descriptions_report(fo_dataset, photos, encoder):
    long_text = "a cat " + " ".join(["with very long striped fur"] * 6)
    descriptions = {
        "CAT": ["a cat with whiskers", long_text, "a cat with whiskers"],
        "astronaut": ["a person in a space suit"],
        "coffee": ["a cup of coffee"],
        "zebra": ["a striped horse"],
    }
    ds = fo_dataset(photos)
    result = _run(ds, encoder, descriptions=descriptions, method="wca")
    report = result.descriptions_report
    assert report.startswith("Descriptions: 3/3 classes from inline")
    assert "1 exact duplicates in 1 classes" in report
    assert "1 file keys match no class: 'zebra'" in report
    assert "1 texts exceed the text encoder's context" in report
    info = runs.get_bifta_run_info(ds, "bifta")["descriptions"]["report"]
    assert info["truncated"] == 1  # the tiny test model's context is 16 tokens
    assert info["unmatched_keys"] == ["zebra"] and info["duplicates"] == {"cat": 1}
