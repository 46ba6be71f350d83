"""model.py: BiftaModel through dataset.apply_model (real MongoDB, tiny model)."""

import numpy as np
import pytest

import fiftyone as fo
from fiftyone import ViewField as F

from bifta_plugin.sdk import run as api
from bifta_plugin.sdk.model import BiftaModel
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions

CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {
    "cat": ["a cat with whiskers", "a small furry pet"],
    "astronaut": ["a person in a space suit"],
    "coffee": ["a cup of coffee", "a hot drink in a mug"],
}
FAST = dict(num_candidates=8, max_views=8)


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


@pytest.fixture(scope="module")
def model(encoder):
    return BiftaModel(CLASSES, DESCRIPTIONS, method="bifta", encoder=EncoderSpec(instance=encoder), **FAST)


@pytest.fixture
def photos(sample_images):
    # cat.jpg, astronaut.png, camera.png (grayscale), tiny-cat.png (13x7)
    return [sample_images[i] for i in (0, 1, 6, 8)]


def test_model_interface(model):
    assert model.media_type == "image"
    assert model.ragged_batches is False
    assert model.transforms is None
    assert model.has_logits is True
    assert model.classes == CLASSES
    assert model.crops is True
    assert model.label_fields("bifta") == {"label": "bifta", "crops": "bifta_crops"}


@pytest.mark.parametrize("batch_size", [None, 3])
def test_apply_model_writes_the_contract_fields(fo_dataset, photos, model, batch_size):
    ds = fo_dataset(photos)
    ds.apply_model(
        model,
        label_field=model.label_fields("bifta"),
        batch_size=batch_size,
        skip_failures=False,
        store_logits=True,
    )
    schema = ds.get_field_schema()
    assert schema["bifta"].document_type is fo.Classification
    assert schema["bifta_crops"].document_type is fo.Detections
    assert ds.count("bifta") == len(photos)
    for sample in ds:
        assert sample.bifta.label in CLASSES
        assert len(sample.bifta.logits) == len(CLASSES)
        dets = sample.bifta_crops.detections
        assert dets and sum(d.best for d in dets) == 1
        boxes = np.array([d.bounding_box for d in dets])
        assert boxes.min() >= 0 and (boxes[:, :2] + boxes[:, 2:]).max() <= 1 + 1e-9


def test_apply_model_matches_run_bifta(fo_dataset, photos, model, encoder):
    """Same crops (keyed by filepath) and same scores as the SDK path."""
    ds = fo_dataset(photos)
    ds.apply_model(model, label_field=model.label_fields("m"), batch_size=2,
                   skip_failures=False, store_logits=True)
    api.run_bifta(ds, CLASSES, DESCRIPTIONS, encoder=EncoderSpec(instance=encoder),
                  runtime=RunOptions(num_workers=0), output=OutputSpec("r"), **FAST)
    for sample in ds:
        m_boxes = [d.bounding_box for d in sample.m_crops.detections]
        r_boxes = [d.bounding_box for d in sample.r_crops.detections]
        np.testing.assert_allclose(m_boxes, r_boxes)
        # FiftyOne decodes with OpenCV, run_bifta with PIL: allow tiny
        # decoder differences on the JPEG
        np.testing.assert_allclose(sample.m.logits, sample.r.logits, atol=0.05)


def test_plain_string_label_field_prefixes_every_key(fo_dataset, photos, model):
    ds = fo_dataset(photos[:1])
    ds.apply_model(model, label_field="x", skip_failures=False)
    schema = ds.get_field_schema()
    assert "x_label" in schema and "x_crops" in schema and "x" not in schema


def test_store_logits_controls_logits(fo_dataset, photos, model):
    ds = fo_dataset(photos[:2])
    ds.apply_model(model, label_field=model.label_fields("p"), skip_failures=False)
    assert ds.values("p.logits") == [None, None]


def test_global_method_returns_one_classification(fo_dataset, photos, encoder):
    model = BiftaModel(CLASSES, method="clip", encoder=EncoderSpec(instance=encoder))
    assert model.crops is False and model.label_fields("clip") == "clip"
    ds = fo_dataset(photos)
    ds.apply_model(model, label_field="clip", batch_size=2, skip_failures=False)
    schema = ds.get_field_schema()
    assert schema["clip"].document_type is fo.Classification
    assert "clip_crops" not in schema
    assert ds.count("clip") == len(photos)


def test_crops_can_be_turned_off(fo_dataset, photos, encoder):
    model = BiftaModel(
        CLASSES, DESCRIPTIONS, method="wca", encoder=EncoderSpec(instance=encoder), crops=False, **FAST
    )
    ds = fo_dataset(photos[:2])
    ds.apply_model(model, label_field=model.label_fields("w"), skip_failures=False)
    assert ds.count("w") == 2 and "w_crops" not in ds.get_field_schema()


def test_predict_without_samples_uses_a_pixel_key(model, sample_images):
    from PIL import Image

    image = np.asarray(Image.open(sample_images[0][0]).convert("RGB"))
    first = model.predict(image)
    again = model.predict_all([image.copy()])[0]
    assert first["label"].label == again["label"].label
    np.testing.assert_allclose(
        [d.bounding_box for d in first["crops"].detections],
        [d.bounding_box for d in again["crops"].detections],
    )


def test_unreadable_image_and_skip_failures(fo_dataset, photos, corrupt_image, model):
    ds = fo_dataset([photos[0], (corrupt_image, "cat")])
    with pytest.raises(Exception):
        ds.apply_model(model, label_field=model.label_fields("f"), skip_failures=False)
    ds.apply_model(model, label_field=model.label_fields("g"), skip_failures=True)
    assert ds.match(F("filepath") == corrupt_image).first().g is None
    assert ds.count("g") == 1


def test_model_validates_like_run_bifta(encoder):
    with pytest.raises(ValueError, match="needs class descriptions"):
        BiftaModel(CLASSES, method="bifta", encoder=EncoderSpec(instance=encoder))
    with pytest.raises(ValueError, match="Unknown config option"):
        BiftaModel(CLASSES, method="clip", encoder=EncoderSpec(instance=encoder), nope=1)
    with pytest.raises(ValueError, match="duplicate"):
        BiftaModel(["a", "a"], method="clip", encoder=EncoderSpec(instance=encoder))
