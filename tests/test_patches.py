"""Object patches through run_bifta: real photos with hand-set boxes, real
MongoDB, real FiftyOne (to_patches, evaluate_classifications, Brain), tiny
model."""

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.core.fields as fof
from fiftyone import ViewField as F

from bifta_plugin.sdk import patches as bp
from bifta_plugin.sdk import records
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions, TargetSpec
from bifta_plugin.sdk.run import run_bifta

CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {
    "cat": ["a cat with whiskers", "a small furry pet"],
    "astronaut": ["a person in a space suit"],
    "coffee": ["a cup of coffee", "a hot drink in a mug"],
}
FAST = dict(num_candidates=6, max_views=6)
#: per image: (box, ground truth); cat.jpg is 451 x 300, so the last cat box is 1 x 1 px
BOXES = {
    "cat": [([0.3, 0.05, 0.45, 0.7], "cat"), ([0.92, 0.9, 0.08, 0.1], "cat"),
            ([200 / 451, 150 / 300, 1 / 451, 1 / 300], "cat")],
    "astronaut": [([0.3, 0.0, 0.45, 0.5], "astronaut"), ([0.0, 0.55, 0.35, 0.45], "astronaut")],
    "coffee": [([0.1, 0.1, 0.8, 0.8], "coffee")],
}


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


@pytest.fixture
def ds(fo_dataset, sample_images):
    dataset = fo_dataset()
    samples = []
    for path, label in sample_images[:3]:  # cat, astronaut, coffee
        dets = [fo.Detection(label=gt, bounding_box=box, gt=fo.Classification(label=gt))
                for box, gt in BOXES[label]]
        samples.append(fo.Sample(filepath=path, objects=fo.Detections(detections=dets)))
    samples.append(fo.Sample(filepath=sample_images[3][0]))  # rocket: no objects
    dataset.add_samples(samples, dynamic=True)  # declares objects.detections.gt
    return dataset


def _run(samples, encoder, batch_size=4, output=None, **target):
    return run_bifta(
        samples, CLASSES, DESCRIPTIONS, method="bifta",
        encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(batch_size=batch_size, num_workers=0, crop_mode="exact"),
        output=output or OutputSpec("bifta"),
        target=TargetSpec(**target),
        **FAST,
    )


def _objects(ds, field):
    return [d for dets in ds.values(f"{field}.detections") if dets for d in dets]


def test_copy_mode_writes_a_detections_field_with_the_predictions(ds, encoder):
    result = _run(ds, encoder, patches_field="objects", output_patches_field="objects_bifta")
    assert result.unit == "objects" and result.num_samples == 6
    assert result.num_processed == 5 and result.num_failed == 1  # the 1 x 1 box
    schema = ds.get_field_schema(flat=True)
    assert schema["objects_bifta"].document_type is fo.Detections
    assert schema["objects_bifta.detections.bifta"].document_type is fo.Classification
    assert isinstance(schema["objects_bifta.detections.bifta_best_crop"], fof.ListField)
    assert schema["objects_bifta.detections.gt"].document_type is fo.Classification
    sources, copies = _objects(ds, "objects"), _objects(ds, "objects_bifta")
    assert [c.source_id for c in copies] == [s.id for s in sources]
    assert [c.source_label for c in copies] == [s.label for s in sources]
    assert all(c.id != s.id for c, s in zip(copies, sources))
    for src, c in zip(sources, copies):
        assert c.bounding_box == src.bounding_box
        if c.bifta_error is None:
            assert c.label == c.bifta.label and c.label in CLASSES
            assert c.confidence == pytest.approx(c.bifta.confidence)
            assert len(c.bifta.logits) == len(CLASSES)
            assert 0 <= c.bifta.margin <= 1
        else:
            assert c.label is None and c.bifta is None and c.bifta_best_crop is None
    # the untouched objects keep no result attributes
    assert all(getattr(s, "bifta", None) is None for s in sources)
    # a sample without objects gets an empty copy
    rocket = ds.match(F("objects") == None).first()  # noqa: E711
    assert len(rocket.objects_bifta.detections) == 0


def test_tiny_box_is_a_clear_per_object_error(ds, encoder):
    _run(ds, encoder, patches_field="objects")
    errors = [d.bifta_error for d in _objects(ds, "objects") if d.bifta_error]
    assert len(errors) == 1
    assert "is 1 x 1 pixels in the 451 x 300 image, below min_size=8" in errors[0]
    # lowering min_size classifies it (a 1 x 1 patch is still an image)
    result = _run(ds, encoder, patches_field="objects", patch_min_size=1,
                  output=OutputSpec("small"))
    assert result.num_failed == 0 and result.num_processed == 6


def test_in_place_keeps_the_objects_and_adds_attributes(ds, encoder):
    before = [(d.id, d.label, d.bounding_box) for d in _objects(ds, "objects")]
    _run(ds, encoder, patches_field="objects")
    after = _objects(ds, "objects")
    assert [(d.id, d.label, d.bounding_box) for d in after] == before
    assert sum(d.bifta is not None for d in after) == 5
    assert "objects_bifta" not in ds.get_field_schema()


def test_best_crop_lies_inside_the_padded_patch_on_the_full_image(ds, encoder):
    _run(ds, encoder, patches_field="objects", patch_padding=0.25)
    for d in _objects(ds, "objects"):
        if d.bifta_best_crop is None:
            continue
        x, y, w, h = d.bounding_box
        bx, by, bw, bh = d.bifta_best_crop
        pad_x, pad_y = 0.25 * w, 0.25 * h
        eps = 0.01
        assert bx >= max(0, x - pad_x) - eps and by >= max(0, y - pad_y) - eps
        assert bx + bw <= min(1, x + w + pad_x) + eps and by + bh <= min(1, y + h + pad_y) + eps


def test_results_do_not_depend_on_batch_size(ds, encoder):
    _run(ds, encoder, batch_size=1, patches_field="objects", output_patches_field="a")
    _run(ds, encoder, batch_size=7, patches_field="objects", output_patches_field="b",
         output=OutputSpec("bifta", run_key="b"))
    a, b = _objects(ds, "a"), _objects(ds, "b")
    assert [d.label for d in a] == [d.label for d in b]
    for da, db in zip(a, b):
        if da.bifta is None:
            assert db.bifta is None
            continue
        np.testing.assert_allclose(da.bifta.logits, db.bifta.logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(da.bifta_best_crop, db.bifta_best_crop, atol=1e-9)


def test_patches_view_classifies_only_its_objects(ds, encoder):
    view = ds.to_patches("objects").match(F("objects.label") == "astronaut")
    result = _run(view, encoder)
    assert result.num_samples == 2 and result.num_processed == 2
    astronauts = [d for d in _objects(ds, "objects") if d.label == "astronaut"]
    assert all(d.bifta.label in CLASSES for d in astronauts)
    cats = [d for d in _objects(ds, "objects") if d.label == "cat"]
    assert len(cats) == 3 and all(getattr(d, "bifta", None) is None for d in cats)


def test_evaluation_on_patches(ds, encoder):
    result = _run(ds, encoder, patches_field="objects", output_patches_field="pred",
                  output=OutputSpec("bifta", gt_field="gt"))
    assert result.eval_key == "eval_bifta" and result.num_evaluated == 5
    patches = ds.to_patches("pred")
    preds = patches.values("pred.bifta.label")
    truth = patches.values("pred.gt.label")
    pairs = [(p, t) for p, t in zip(preds, truth) if p is not None]
    assert result.accuracy == pytest.approx(np.mean([p == t for p, t in pairs]))
    assert ds.has_evaluation("eval_bifta")
    # FiftyOne's own evaluation on the patches view, by hand
    again = patches.exists("pred.bifta").evaluate_classifications(
        "pred.bifta", gt_field="pred.gt", eval_key="by_hand")
    assert again.metrics()["accuracy"] == pytest.approx(result.accuracy)


def test_ground_truth_from_the_objects_labels(ds, encoder):
    assert bp.label_to_attribute(ds, "objects", "truth") == 6
    result = _run(ds, encoder, patches_field="objects", output=OutputSpec("bifta", gt_field="truth"))
    assert result.num_evaluated == 5 and result.accuracy is not None


def test_patch_embeddings_for_brain(ds, encoder):
    _run(ds, encoder, patches_field="objects", output_patches_field="pred",
         output=OutputSpec("bifta", embeddings_field="emb"))
    assert isinstance(ds.get_field("pred.detections.emb"), fof.VectorField)
    emb = [d.emb for d in _objects(ds, "pred") if d.emb is not None]
    assert len(emb) == 5 and emb[0].shape == (encoder.embed_dim,)
    fob.compute_similarity(ds, patches_field="pred", embeddings="emb", backend="sklearn",
                           brain_key="patch_sim")
    patches = ds.to_patches("pred").exists("pred.emb")
    query = patches.first()
    nearest = patches.sort_by_similarity(query.id, k=2, brain_key="patch_sim")
    assert nearest.first().id == query.id


def test_resume_redoes_only_unfinished_samples(ds, encoder):
    _run(ds, encoder, patches_field="objects")
    sample = ds.match(F("objects.detections").length() == 2).first()
    sample.objects.detections[0].bifta = None
    sample.save()
    result = run_bifta(
        ds, CLASSES, DESCRIPTIONS, method="bifta", encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(num_workers=0, crop_mode="exact", skip_existing=True),
        target=TargetSpec(patches_field="objects"), **FAST,
    )
    assert result.num_processed == 2 and result.num_skipped == 4
    sample.reload()
    assert all(d.bifta is not None for d in sample.objects.detections)


def test_delete_run_removes_its_attributes_not_the_objects(ds, encoder):
    _run(ds, encoder, patches_field="objects")
    records.delete_bifta_run(ds, "bifta")
    assert ds.get_field("objects.detections.bifta") is None
    assert ds.get_field("objects.detections.bifta_error") is None
    assert len(_objects(ds, "objects")) == 6


@pytest.mark.parametrize(
    "target, output, message",
    [
        (dict(patches_field="filepath"), {}, "must be a Detections field"),
        (dict(patches_field="nope"), {}, "must be a Detections field"),
        (dict(patches_field="objects"), dict(label_field="label"), "built in"),
        (dict(patches_field="objects", output_patches_field="objects"), {}, "pass None"),
        (dict(patches_field="objects", patch_padding=-1), {}, "patch_padding"),
        (dict(output_patches_field="x"), {}, "needs patches_field"),
        (dict(patches_field="objects"), dict(gt_field="ground_truth"), "Classification attribute"),
    ],
)
def test_bad_targets_are_refused_before_writing(ds, target, output, message):
    from bifta_plugin.sdk.plan import make_plan

    with pytest.raises(ValueError, match=message):
        make_plan(ds, CLASSES, DESCRIPTIONS, method="bifta",
                  output=OutputSpec(**output), target=TargetSpec(**target))
    assert not ds.has_runs


def test_the_default_min_size_is_the_engines():
    from bifta_plugin.core import defaults
    from bifta_plugin.engine import regions

    assert TargetSpec().patch_min_size == defaults.PATCH_MIN_SIZE == regions.DEFAULT_MIN_SIZE


def _sharded(samples, encoder, num_shards, output, **target):
    """The shards of one run, one after the other in this process (the
    last to complete finalises the run); returns every shard's result."""
    return [
        run_bifta(
            samples, CLASSES, DESCRIPTIONS, method="bifta", encoder=EncoderSpec(instance=encoder),
            runtime=RunOptions(batch_size=2, num_workers=0, crop_mode="exact", shard=(i, num_shards)),
            output=output, target=TargetSpec(**target), **FAST,
        )
        for i in range(num_shards)
    ]


@pytest.mark.parametrize("from_view", [False, True])
def test_sharded_patches_run_equals_one_run(ds, encoder, from_view):
    """A patches run split over shards labels every object exactly as one
    run does, counts objects (not samples) in the merged result, and the
    finalising shard evaluates them all; from a to_patches() view too."""
    samples = ds.to_patches("objects").match(F("objects.label") != "coffee") if from_view else ds
    target = dict(patches_field="objects") if from_view else dict(
        patches_field="objects", output_patches_field="whole")
    whole = run_bifta(
        samples, CLASSES, DESCRIPTIONS, method="bifta", encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(batch_size=2, num_workers=0, crop_mode="exact"),
        output=OutputSpec("whole", gt_field="gt"), target=TargetSpec(**target), **FAST,
    )
    if not from_view:
        target["output_patches_field"] = "sharded"
    shards = _sharded(samples, encoder, 2, OutputSpec("sharded", gt_field="gt"), **target)
    expected = 5 if from_view else 6  # objects targeted (the coffee one left out of the view)
    assert whole.num_samples == expected
    assert 0 < shards[0].num_samples < expected  # really split: shard 0 had part of them
    final = shards[-1]  # the last to complete finalises and merges
    assert final.num_samples == expected
    assert final.num_processed + final.num_failed == expected == whole.num_processed + whole.num_failed
    assert final.accuracy == pytest.approx(whole.accuracy)
    info = records.get_bifta_run_info(ds, "sharded")
    assert info["results"]["num_samples"] == expected
    ds.reload()
    container_a = "objects" if from_view else "whole"
    container_b = "objects" if from_view else "sharded"
    objects_a, objects_b = _objects(ds, container_a), _objects(ds, container_b)
    labels_a = [getattr(d, "whole", None) and d.whole.label for d in objects_a]
    labels_b = [getattr(d, "sharded", None) and d.sharded.label for d in objects_b]
    assert labels_a == labels_b
    assert sum(label is not None for label in labels_b) == whole.num_processed
