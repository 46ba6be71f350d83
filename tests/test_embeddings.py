"""Embeddings for FiftyOne Brain: the run's ``embeddings_field`` and
BiftaModel's embeddings and prompt mixins (real MongoDB, real Brain, tiny
model)."""

import numpy as np
import pytest

import fiftyone.brain as fob
import fiftyone.core.fields as fof

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
    return BiftaModel(
        CLASSES, DESCRIPTIONS, method="bifta", encoder=EncoderSpec(instance=encoder), **FAST
    )


@pytest.fixture
def photos(sample_images):
    return sample_images[:8]  # the eight skimage photos


def _run(ds, encoder, batch_size=4, **output):
    return api.run_bifta(
        ds, CLASSES, DESCRIPTIONS,
        encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(batch_size=batch_size, num_workers=0, crop_mode="exact"),
        output=OutputSpec("bifta", **output),
        **FAST,
    )


def _unit_rows(matrix):
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------
# run_bifta(..., embeddings_field=)
# ----------------------------------------------------------------------------
def test_run_stores_the_global_embeddings(fo_dataset, photos, encoder, model):
    ds = fo_dataset(photos)
    result = _run(ds, encoder, embeddings_field="bifta_embedding")
    assert result.num_processed == len(photos)
    field = ds.get_field("bifta_embedding")
    assert isinstance(field, fof.VectorField)
    assert result.fields["embeddings"] == "bifta_embedding"
    embeddings = np.stack(ds.values("bifta_embedding"))
    assert embeddings.shape == (len(photos), encoder.embed_dim)
    assert embeddings.dtype == np.float32
    _unit_rows(embeddings)
    # the same vectors as the model's embed_all (the same global view)
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in ds.values("filepath")]
    np.testing.assert_allclose(model.embed_all(images), embeddings, atol=1e-5)


def test_embeddings_do_not_depend_on_batch_size(fo_dataset, photos, encoder):
    a, b = fo_dataset(photos), fo_dataset(photos)
    _run(a, encoder, batch_size=1, embeddings_field="emb")
    _run(b, encoder, batch_size=5, embeddings_field="emb")
    np.testing.assert_allclose(np.stack(a.values("emb")), np.stack(b.values("emb")), atol=1e-6)


def test_failed_image_has_no_embedding(fo_dataset, photos, corrupt_image, encoder):
    ds = fo_dataset([photos[0], (corrupt_image, None)])
    result = _run(ds, encoder, embeddings_field="emb")
    assert result.num_failed == 1
    emb = dict(zip(ds.values("filepath"), ds.values("emb")))
    assert emb[corrupt_image] is None and emb[photos[0][0]] is not None


def test_resume_redoes_a_sample_without_its_embedding(fo_dataset, photos, encoder):
    ds = fo_dataset(photos[:3])
    _run(ds, encoder, embeddings_field="emb")
    first = ds.first()
    first["emb"] = None
    first.save()
    result = api.run_bifta(
        ds, CLASSES, DESCRIPTIONS, encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(num_workers=0, crop_mode="exact", skip_existing=True),
        output=OutputSpec("bifta", embeddings_field="emb"), **FAST,
    )
    assert result.num_processed == 1 and result.num_skipped == 2
    assert ds.count("emb") == 3


@pytest.mark.parametrize(
    "name, message",
    [("bifta_crops", "one of the fields of label_field"), ("ground_truth", "gt_field"),
     ("bad name!", "embeddings_field")],
)
def test_bad_embeddings_field_is_refused_before_writing(fo_dataset, photos, name, message):
    ds = fo_dataset(photos[:1])
    with pytest.raises(ValueError, match=message):
        from bifta_plugin.sdk.plan import make_plan

        make_plan(
            ds, CLASSES, DESCRIPTIONS, method="bifta",
            output=OutputSpec("bifta", embeddings_field=name, gt_field="ground_truth"),
        )
    assert "bifta" not in ds.get_field_schema()


def test_brain_similarity_and_visualization_on_stored_embeddings(fo_dataset, photos, encoder):
    ds = fo_dataset(photos)
    _run(ds, encoder, embeddings_field="emb")
    index = fob.compute_similarity(
        ds, embeddings="emb", backend="sklearn", brain_key="bifta_sim"
    )
    assert index.total_index_size == len(photos)
    query = ds.first()
    view = ds.sort_by_similarity(query.id, k=3, brain_key="bifta_sim")
    assert len(view) == 3 and view.first().id == query.id  # itself is nearest
    # the order is the cosine order of the stored vectors
    emb = np.stack(ds.values("emb"))
    expected = np.argsort(-(emb @ emb[0]), kind="stable")[:3]
    assert view.values("id") == [ds.values("id")[i] for i in expected]

    results = fob.compute_visualization(
        ds, embeddings="emb", method="pca", brain_key="bifta_viz", seed=0
    )
    points = results.points
    assert points.shape == (len(photos), 2) and np.isfinite(points).all()
    assert set(ds.list_brain_runs()) == {"bifta_sim", "bifta_viz"}


# ----------------------------------------------------------------------------
# BiftaModel: EmbeddingsMixin and PromptMixin
# ----------------------------------------------------------------------------
def test_model_declares_embeddings_and_prompts(model):
    import fiftyone.core.models as fom

    assert isinstance(model, fom.EmbeddingsMixin) and isinstance(model, fom.PromptMixin)
    assert model.has_embeddings and model.can_embed_prompts


def test_model_embeds_images_and_prompts(model, encoder, sample_images):
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p, _ in sample_images[:3]]
    embeddings = model.embed_all(images)
    assert embeddings.shape == (3, encoder.embed_dim) and embeddings.dtype == np.float32
    _unit_rows(embeddings)
    np.testing.assert_allclose(model.embed(images[1]), embeddings[1], atol=1e-6)
    prompts = model.embed_prompts(["a photo of a cat", "a photo of a dog"])
    assert prompts.shape == (2, encoder.embed_dim)
    _unit_rows(prompts)
    np.testing.assert_allclose(
        prompts, encoder.encode_texts(["a photo of a cat", "a photo of a dog"]).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(model.embed_prompt("a photo of a dog"), prompts[1], atol=1e-6)


def test_brain_similarity_with_the_model_and_a_text_query(fo_dataset, photos, model):
    ds = fo_dataset(photos)
    fob.compute_similarity(ds, model=model, backend="sklearn", brain_key="m_sim",
                           embeddings="m_emb", batch_size=4)
    assert ds.count("m_emb") == len(photos)
    view = ds.sort_by_similarity("a photo of a cat", k=4, brain_key="m_sim")
    assert len(view) == 4
    emb = np.stack(ds.values("m_emb"))
    text = model.embed_prompt("a photo of a cat")
    expected = np.argsort(-(emb @ text), kind="stable")[:4]
    assert view.values("id") == [ds.values("id")[i] for i in expected]


@pytest.mark.parametrize("dim", [1, 64, 512])
def test_embedding_bytes_are_fiftyones_vector_format(dim):
    import fiftyone.core.utils as fou

    from bifta_plugin.sdk.labels import embedding_bytes

    vector = np.random.default_rng(dim).standard_normal(dim).astype(np.float32)
    back = fou.deserialize_numpy_array(embedding_bytes(vector))
    assert back.dtype == np.float32 and back.shape == (dim,)
    np.testing.assert_array_equal(back, vector)
    np.testing.assert_array_equal(fof.VectorField().to_python(embedding_bytes(vector)), vector)
    assert embedding_bytes(None) is None
