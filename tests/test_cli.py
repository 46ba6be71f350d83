"""``python -m bifta_plugin``: demo, classify, folder, runs, info, delete-run.

Most commands run in-process through :func:`bifta_plugin.cli.commands.main` (the
session's isolated FiftyOne database); one test runs the real module entry
point in a subprocess. Models: the tiny test config (registered through the
CLI's ``--model-config``), with random weights or a saved checkpoint standing
in for downloaded weights.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tiny_model import TINY_CONFIG_PATH, TINY_MODEL_NAME, save_tiny_checkpoint

pytestmark = pytest.mark.fiftyone

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", TINY_MODEL_NAME, "--model-config", str(TINY_CONFIG_PATH)]
FAST = ["--num-candidates", "3", "--batch-size", "4"]
FAST_GLOBAL = ["--batch-size", "4"]  # the global methods draw no crops


def _main(argv, capsys):
    from bifta_plugin.cli.commands import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dataset_name():
    """A unique dataset name, deleted at teardown if the test created it."""
    import fiftyone as fo

    name = "bifta-cli-" + uuid.uuid4().hex[:12]
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A local checkpoint of the tiny model: the "weights are present" path."""
    return str(
        save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    )


# ----------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------
def test_demo_random_weights_end_to_end(capsys, tmp_path, dataset_name):
    import fiftyone as fo

    code, out, err = _main(
        [
            "demo",
            "--pretrained",
            "none",
            *TINY,
            *FAST,
            "--dataset",
            dataset_name,
            "--media-dir",
            tmp_path,
        ],
        capsys,
    )
    assert code == 0, err
    assert "RANDOM WEIGHTS" in err  # the explicit notice
    assert "meaningless" in out
    assert "Accuracy:" in out and f"fiftyone app launch {dataset_name}" in out
    for image in (
        "cat.jpg",
        "rocket.jpg",
        "motorcycle-right.jpg",
        "clock.png",
    ):
        assert image in out and (tmp_path / image).is_file()

    ds = fo.load_dataset(dataset_name)
    assert ds.persistent and len(ds) == 10
    assert ds.count("bifta") == 10 and ds.count("bifta_crops") == 10
    assert ds.has_evaluation("eval_bifta")
    assert len(ds.values("bifta_crops")[0].detections) <= 3

    # rerunning replaces the dataset (and --limit keeps it small)
    code, out, err = _main(
        [
            "demo",
            "--pretrained",
            "none",
            *TINY,
            *FAST_GLOBAL,
            "--dataset",
            dataset_name,
            "--media-dir",
            tmp_path,
            "--limit",
            "2",
            "--method",
            "clip",
        ],
        capsys,
    )
    assert code == 0, err
    assert len(fo.load_dataset(dataset_name)) == 2


def test_demo_with_local_checkpoint_has_no_notice(
    capsys, tmp_path, dataset_name, checkpoint
):
    from bifta_plugin.sdk import records as runs
    import fiftyone as fo

    code, out, err = _main(
        [
            "demo",
            "--pretrained",
            checkpoint,
            *TINY,
            *FAST,
            "--limit",
            "3",
            "--dataset",
            dataset_name,
            "--media-dir",
            tmp_path,
        ],
        capsys,
    )
    assert code == 0, err
    assert "RANDOM" not in err and "COULD NOT LOAD" not in err
    assert "meaningless" not in out
    assert f"weights {checkpoint}" in out
    info = runs.get_bifta_run_info(fo.load_dataset(dataset_name), "bifta")
    assert info["pretrained"] == checkpoint


def test_demo_unloadable_weights_fall_back_loudly(
    capsys, tmp_path, dataset_name
):
    # a tag the tiny model does not have: loading fails, the demo goes on
    code, out, err = _main(
        [
            "demo",
            "--pretrained",
            "openai",
            *TINY,
            "--method",
            "clip",
            "--limit",
            "2",
            "--dataset",
            dataset_name,
            "--media-dir",
            tmp_path,
        ],
        capsys,
    )
    assert code == 0, err
    assert "COULD NOT LOAD THE PRETRAINED WEIGHTS" in err
    assert "RANDOM weights" in err and "reason:" in err
    assert "meaningless" in out


@pytest.mark.slow
def test_demo_offline_openai_weights_fail_fast_then_random(
    capsys, tmp_path, dataset_name
):
    # the real default model and tag; conftest sets HF_HUB_OFFLINE=1
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    code, out, err = _main(
        [
            "demo",
            "--method",
            "clip",
            "--limit",
            "1",
            "--device",
            "cpu",
            "--dataset",
            dataset_name,
            "--media-dir",
            tmp_path,
        ],
        capsys,
    )
    assert code == 0, err
    assert "COULD NOT LOAD THE PRETRAINED WEIGHTS" in err
    assert "'ViT-B-32'" in err and "'openai'" in err
    assert "model ViT-B-32 (RANDOM weights)" in out


@pytest.mark.slow
def test_module_entry_point_runs_demo(tmp_path, dataset_name):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bifta_plugin",
            "demo",
            "--pretrained",
            "none",
            *TINY,
            *FAST,
            "--limit",
            "2",
            "--dataset",
            dataset_name,
            "--media-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RANDOM WEIGHTS" in proc.stderr
    assert "Accuracy:" in proc.stdout


# ----------------------------------------------------------------------------
# classify / runs / info / delete-run
# ----------------------------------------------------------------------------
def test_classify_runs_info_delete(
    capsys, fo_dataset, sample_images, tmp_path, checkpoint
):
    ds = fo_dataset(sample_images[:3])
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["cat", "astronaut", "coffee"]))
    argv = [
        "classify",
        "--dataset",
        ds.name,
        "--classes-file",
        classes,
        *TINY,
        "--pretrained",
        checkpoint,
        *FAST_GLOBAL,
        "--label-field",
        "pred",
        "--gt-field",
        "ground_truth",
        "--device",
        "cpu",
    ]
    # no --descriptions: wca is refused (as by run_bifta), nothing else runs
    code, out, err = _main([*argv, "--method", "wca"], capsys)
    assert code == 2 and "method 'wca' needs class descriptions" in err
    ds.reload()
    assert "pred" not in ds.get_field_schema() and not ds.has_run("pred")

    code, out, err = _main([*argv, "--method", "ensemble"], capsys)
    assert code == 0, err
    assert "3 processed" in out and "Accuracy" in out
    ds.reload()
    assert ds.count("pred") == 3 and ds.has_evaluation("eval_pred")

    code, out, err = _main(["runs", "--dataset", ds.name], capsys)
    assert code == 0 and "pred" in out and "ensemble" in out

    code, out, err = _main(["info", "--dataset", ds.name, "pred"], capsys)
    info = json.loads(out)
    assert info["pretrained"] == checkpoint and info["method"] == "ensemble"

    code, out, err = _main(
        ["delete-run", "--dataset", ds.name, "pred"], capsys
    )
    assert code == 0 and "pred_scores" in out
    ds.reload()
    assert "pred" not in ds.get_field_schema() and not ds.has_run("pred")


def test_classify_with_descriptions_and_config_settings(
    capsys, fo_dataset, sample_images, tmp_path
):
    ds = fo_dataset(sample_images[:2])
    desc = tmp_path / "d.json"
    desc.write_text(
        json.dumps({"cat": ["a furry pet."], "astronaut": ["a space suit."]})
    )
    code, out, err = _main(
        [
            "classify",
            "--dataset",
            ds.name,
            "--classes-field",
            "ground_truth",
            "--descriptions",
            desc,
            *TINY,
            "--pretrained",
            "none",
            *FAST,
            "--iou-threshold",
            "off",
            "--set",
            "max_views=2",
            "--seed",
            "7",
        ],
        capsys,
    )
    assert code == 0, err
    # the descriptions report and what refinement kept, before the summary
    assert f"Descriptions: 2/2 classes from {desc}" in out
    assert "Descriptions kept: all 2 (2 classes)." in out
    from bifta_plugin.sdk import records as runs

    cfg = runs.get_bifta_run_info(ds, "bifta")["config"]
    assert cfg["method"] == "bifta" and cfg["iou_threshold"] is None
    assert (
        cfg["max_views"] == 2
        and cfg["seed"] == 7
        and cfg["num_candidates"] == 3
    )


def test_cli_errors_exit_2(capsys, fo_dataset, sample_images):
    code, _, err = _main(
        ["classify", "--dataset", "no-such-dataset", "--classes", "a"], capsys
    )
    assert code == 2 and "no dataset named 'no-such-dataset'" in err

    ds = fo_dataset(sample_images[:1])
    code, _, err = _main(
        [
            "classify",
            "--dataset",
            ds.name,
            "--classes",
            "a",
            *TINY,
            "--pretrained",
            "none",
            "--method",
            "clip",
            "--set",
            "bogus=1",
        ],
        capsys,
    )
    assert code == 2 and "bogus" in err
    code, _, err = _main(["delete-run", "--dataset", ds.name, "nope"], capsys)
    assert code == 2 and "not a BiFTA run" in err
    with pytest.raises(SystemExit):  # argparse: exactly one classes source
        _main(
            [
                "classify",
                "--dataset",
                ds.name,
                "--classes",
                "a",
                "--classes-field",
                "ground_truth",
            ],
            capsys,
        )


# ----------------------------------------------------------------------------
# folder
# ----------------------------------------------------------------------------
def test_folder_with_labels_from_subdirs(
    capsys, tmp_path, sample_images, dataset_name
):
    import fiftyone as fo

    root = tmp_path / "photos"
    for path, label in sample_images[:4]:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / label)
    code, out, err = _main(
        [
            "folder",
            root,
            "--dataset",
            dataset_name,
            "--labels-from-subdirs",
            "--method",
            "clip",
            *TINY,
            "--pretrained",
            "none",
            "--batch-size",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    assert "with 4 images" in out and "Accuracy" in out
    ds = fo.load_dataset(dataset_name)
    assert ds.persistent
    assert sorted(ds.distinct("ground_truth.label")) == sorted(
        label for _, label in sample_images[:4]
    )
    assert set(ds.distinct("bifta.label")) <= set(
        ds.distinct("ground_truth.label")
    )

    # the name is taken now
    code, _, err = _main(
        ["folder", root, "--dataset", dataset_name, "--classes", "x", "--method", "clip"],
        capsys,
    )
    assert code == 2 and "--overwrite-dataset" in err


def test_folder_plain_images_with_typed_classes(
    capsys, tmp_path, sample_images, corrupt_image, dataset_name
):
    import fiftyone as fo

    root = tmp_path / "flat"
    (root / "nested").mkdir(parents=True)
    shutil.copy(sample_images[0][0], root)
    shutil.copy(sample_images[2][0], root / "nested")
    shutil.copy(corrupt_image, root)
    code, out, err = _main(
        [
            "folder",
            root,
            "--dataset",
            dataset_name,
            "--classes",
            "cat",
            "coffee",
            "--method",
            "ensemble",
            *TINY,
            "--pretrained",
            "none",
        ],
        capsys,
    )
    assert code == 0, err
    assert "with 3 images" in out and "1 failed" in out
    ds = fo.load_dataset(dataset_name)
    assert ds.count("bifta") == 2 and ds.count("bifta_error") == 1


def test_classify_stores_embeddings(capsys, fo_dataset, sample_images, checkpoint):
    import fiftyone.core.fields as fof
    import numpy as np

    ds = fo_dataset(sample_images[:3])
    code, out, err = _main(
        ["classify", "--dataset", ds.name, "--classes", "cat", "astronaut", "coffee",
         *TINY, "--pretrained", checkpoint, *FAST_GLOBAL, "--method", "clip",
         "--device", "cpu", "--embeddings-field", "clip_emb"],
        capsys,
    )
    assert code == 0, err
    ds.reload()
    assert isinstance(ds.get_field("clip_emb"), fof.VectorField)
    embeddings = np.stack(ds.values("clip_emb"))
    assert embeddings.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_classify_objects_of_a_detections_field(capsys, fo_dataset, sample_images, checkpoint):
    import fiftyone as fo

    ds = fo_dataset()
    ds.add_samples([
        fo.Sample(filepath=p, boxes=fo.Detections(detections=[
            fo.Detection(label=label, bounding_box=[0.2, 0.2, 0.6, 0.6]),
            fo.Detection(label=label, bounding_box=[0.0, 0.0, 0.01, 0.01]),  # a few pixels
        ]))
        for p, label in sample_images[:2]
    ])
    code, out, err = _main(
        ["classify", "--dataset", ds.name, "--classes", "cat", "astronaut",
         *TINY, "--pretrained", checkpoint, *FAST_GLOBAL, "--method", "clip",
         "--device", "cpu", "--patches-field", "boxes", "--patch-padding", "0.1",
         "--label-field", "pred"],
        capsys,
    )
    assert code == 0, err
    assert "2 processed" in out and "2 failed of 4 objects" in out
    assert "2 objects failed; see the 'boxes.detections.pred_error' attribute" in err
    ds.reload()
    assert ds.count("boxes.detections.pred") == 2
