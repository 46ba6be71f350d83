"""The repository's ``zoo/`` folder as a FiftyOne remote zoo model source:
registered from an archive URL (served on 127.0.0.1) and from a copy in
``model_zoo_dir``; loaded with ``foz.load_zoo_model``; used by
``apply_model`` and by Brain with a model name (real FiftyOne, tiny model)."""

import functools
import http.server
import os
import shutil
import tarfile
import threading

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.zoo as foz

from tiny_model import TINY_CONFIG_PATH, TINY_MODEL_NAME, save_tiny_checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO_DIR = os.path.join(REPO_ROOT, "zoo")
NAME = "bifta-open-clip-torch"
CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {
    "cat": ["a cat with whiskers"],
    "astronaut": ["a person in a space suit"],
    "coffee": ["a cup of coffee"],
}


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch):
    """An empty, private ``fo.config.model_zoo_dir``."""
    path = tmp_path / "model-zoo"
    path.mkdir()
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("zoo-ckpt") / "tiny.pt"))


@pytest.fixture
def model_kwargs(checkpoint):
    return dict(
        classes=CLASSES, descriptions=DESCRIPTIONS, method="bifta",
        clip_model=TINY_MODEL_NAME, pretrained=checkpoint,
        model_config=str(TINY_CONFIG_PATH), device="cpu", cache_dir=False,
        num_candidates=6, max_views=6,
    )


@pytest.fixture
def archive_url(tmp_path):
    """``http://127.0.0.1:<port>/bifta-zoo.tar.gz``: the zoo folder as an archive."""
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "bifta-zoo.tar.gz", "w:gz") as tar:
        for name in ("manifest.json", "__init__.py"):
            tar.add(os.path.join(ZOO_DIR, name), arcname=f"bifta-zoo/{name}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/bifta-zoo.tar.gz"
    server.shutdown()
    server.server_close()


def test_register_source_from_an_archive_and_load(zoo_dir, archive_url, model_kwargs):
    from bifta_plugin.sdk.model import BiftaModel

    foz.register_zoo_model_source(archive_url)
    assert archive_url in foz.list_zoo_model_sources()
    assert NAME in foz.list_zoo_models(source=archive_url)
    model = foz.load_zoo_model(NAME, cache=False, **model_kwargs)
    assert isinstance(model, BiftaModel)
    assert model.classes == CLASSES and model.config.method == "bifta"
    assert model.config.num_candidates == 6
    assert model.classifier.encoder.model_name == TINY_MODEL_NAME
    # "downloaded": the marker file FiftyOne checks
    assert (zoo_dir / "bifta" / f"{NAME}.json").is_file()
    foz.delete_zoo_model_source(archive_url)
    assert NAME not in foz.list_zoo_models()


def test_local_copy_in_model_zoo_dir_and_apply_model(
    zoo_dir, model_kwargs, fo_dataset, sample_images
):
    shutil.copytree(ZOO_DIR, zoo_dir / "bifta", ignore=shutil.ignore_patterns("__pycache__"))
    model = foz.load_zoo_model(NAME, cache=False, **model_kwargs)
    ds = fo_dataset(sample_images[:3])
    ds.apply_model(model, label_field=model.label_fields("zoo"), skip_failures=False)
    assert ds.count("zoo") == 3 and ds.count("zoo_crops") == 3
    assert set(ds.distinct("zoo.label")) <= set(CLASSES)


def test_load_refuses_a_model_without_classes(zoo_dir):
    shutil.copytree(ZOO_DIR, zoo_dir / "bifta", ignore=shutil.ignore_patterns("__pycache__"))
    with pytest.raises(ValueError, match="needs classes"):
        foz.load_zoo_model(NAME, cache=False)


def test_brain_index_by_zoo_name_reloads_the_model_for_text_queries(
    zoo_dir, model_kwargs, fo_dataset, sample_images
):
    import fiftyone.brain as fob

    shutil.copytree(ZOO_DIR, zoo_dir / "bifta", ignore=shutil.ignore_patterns("__pycache__"))
    ds = fo_dataset(sample_images[:6])
    # model_kwargs stored with the index must be plain values (JSON)
    fob.compute_similarity(ds, model=NAME, model_kwargs=model_kwargs, backend="sklearn",
                           brain_key="zoo_sim", embeddings="zoo_emb", batch_size=3)
    info = ds.get_brain_info("zoo_sim")
    assert info.config.model == NAME and info.config.supports_prompts is True
    reloaded = fo.load_dataset(ds.name)
    view = reloaded.sort_by_similarity("a photo of a cat", k=3, brain_key="zoo_sim")
    emb = np.stack(ds.values("zoo_emb"))
    text = foz.load_zoo_model(NAME, cache=False, **model_kwargs).embed_prompt("a photo of a cat")
    expected = np.argsort(-(emb @ text), kind="stable")[:3]
    assert view.values("id") == [ds.values("id")[i] for i in expected]
