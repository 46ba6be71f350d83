"""Rough edges found on real data: each test shows one of them fixed.

CLI behaviour goes through the real CLI (``main([...])`` on the session's
isolated database); images are real files written here (EXIF-rotated JPEGs,
16-bit PNGs, a large JPEG).
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bifta_plugin.core.classnames import validate_classes
from bifta_plugin.core.config import get_config
from bifta_plugin.engine.pipeline import BiftaClassifier, RuntimeOptions
from bifta_plugin.sdk.results import RunResult

from tiny_model import TINY_CONFIG_PATH, TINY_MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
TINY = ["--model", TINY_MODEL_NAME, "--model-config", str(TINY_CONFIG_PATH)]
FAST = ["--batch-size", "4", "--num-workers", "0"]  # global methods: no crop options
DESCRIPTIONS = {
    "cat": ["a cat with whiskers", "a small furry pet"],
    "astronaut": ["a person in a space suit", "an astronaut with a helmet"],
    "coffee": ["a cup of coffee", "a hot drink in a mug"],
}


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


@pytest.fixture
def dataset_name():
    import fiftyone as fo

    name = "bifta-hard-" + uuid.uuid4().hex[:12]
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def _main(argv, capsys):
    from bifta_plugin.cli.commands import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _sdk_run(samples, classes, descriptions=None, *, encoder, **flat):
    """run_bifta with flat settings grouped into its option groups."""
    from bifta_plugin.sdk.options import split_options
    from bifta_plugin.sdk.run import run_bifta

    return run_bifta(samples, classes, descriptions, **split_options(dict(flat, instance=encoder)))


def _classifier(encoder, **runtime):
    return BiftaClassifier(
        encoder,
        list(DESCRIPTIONS),
        DESCRIPTIONS,
        get_config("bifta", num_candidates=6, max_views=6),
        RuntimeOptions(batch_size=2, num_workers=0, crop_mode="exact", **runtime),
    )


# ----------------------------------------------------------------------------
# 1. `folder` validates everything before it creates the dataset
# ----------------------------------------------------------------------------
def _photo_folder(tmp_path, sample_images):
    root = tmp_path / "photos"
    for path, label in sample_images[:3]:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / label)
    return root


_BAD_FOLDER_ARGS = [
    ([], "pass --classes"),
    (["--classes", "cat", "dog", "--iou-threshold", "1.5"], "iou_threshold"),
    (["--classes", "cat", "dog", "--method", "bifta", "--descriptions", "missing.json"], "missing.json"),
    (["--classes", "cat", "dog", "--model", "ViT-Z-9"], "ViT-Z-9"),
]


@pytest.mark.fiftyone
@pytest.mark.parametrize("bad, message", _BAD_FOLDER_ARGS)
def test_folder_bad_arguments_create_no_dataset(
    capsys, tmp_path, sample_images, dataset_name, bad, message
):
    import fiftyone as fo

    root = _photo_folder(tmp_path, sample_images)
    model = [] if "--model" in bad else TINY
    before = set(fo.list_datasets())
    code, out, err = _main(
        ["folder", root, "--dataset", dataset_name, "--method", "clip", *model,
         "--pretrained", "none", *FAST, *bad],
        capsys,
    )
    assert code == 2 and message in err
    assert "Created dataset" not in out
    assert not fo.dataset_exists(dataset_name)
    assert set(fo.list_datasets()) == before  # no staging dataset left either

    # the corrected command just works (no "already exists")
    code, out, err = _main(
        ["folder", root, "--dataset", dataset_name, "--classes", "cat", "coffee",
         "--method", "clip", *TINY, "--pretrained", "none", *FAST],
        capsys,
    )
    assert code == 0, err
    assert f"Created dataset {dataset_name!r} with 3 images" in out
    ds = fo.load_dataset(dataset_name)
    assert ds.persistent and ds.count("bifta") == 3


@pytest.mark.fiftyone
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_folder_unavailable_device_creates_no_dataset(
    capsys, tmp_path, sample_images, dataset_name
):
    import fiftyone as fo

    root = _photo_folder(tmp_path, sample_images)
    code, out, err = _main(
        ["folder", root, "--dataset", dataset_name, "--classes", "cat", "dog",
         "--method", "clip", *TINY, "--pretrained", "none", "--device", "cuda"],
        capsys,
    )
    assert code == 2 and "cuda" in err.lower()
    assert "Created dataset" not in out and not fo.dataset_exists(dataset_name)


@pytest.mark.fiftyone
def test_folder_overwrite_dataset_replaces_only_after_the_checks(
    capsys, tmp_path, sample_images, dataset_name
):
    import fiftyone as fo

    root = _photo_folder(tmp_path, sample_images)
    old = fo.Dataset(dataset_name, persistent=True)
    old.add_sample(fo.Sample(filepath=sample_images[0][0]))
    descriptions = tmp_path / "cat.json"  # bifta refuses to run without descriptions
    descriptions.write_text('{"cat": ["a small furry pet."]}')
    code, _, err = _main(
        ["folder", root, "--dataset", dataset_name, "--overwrite-dataset",
         "--classes", "cat", "--descriptions", descriptions, "--iou-threshold", "7",
         *TINY, "--pretrained", "none"],
        capsys,
    )
    assert code == 2 and "iou_threshold" in err
    assert len(fo.load_dataset(dataset_name)) == 1  # the old one is untouched
    code, out, err = _main(
        ["folder", root, "--dataset", dataset_name, "--overwrite-dataset",
         "--labels-from-subdirs", "--method", "clip", *TINY, "--pretrained", "none", *FAST],
        capsys,
    )
    assert code == 0, err
    assert len(fo.load_dataset(dataset_name)) == 3 and "Accuracy" in out


# ----------------------------------------------------------------------------
# 2. class names that give the same prompt are rejected, by name
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "classes",
    [["cat", "cat "], ["Cat", "cat"], ["golden_retriever", "golden retriever"],
     ["dog", "sea  lion", "Sea_Lion"]],
)
def test_classes_with_identical_prompts_are_rejected(classes):
    with pytest.raises(ValueError, match="identical prompts") as info:
        validate_classes(classes)
    clash = [c for c in classes if c.lower().replace("_", " ").split()[0] != "dog"]
    for name in clash:
        assert repr(name) in str(info.value)


def test_distinct_classes_still_pass():
    assert validate_classes(["cat", "cats", "t-shirt", "t shirt?"]) == [
        "cat", "cats", "t-shirt", "t shirt?"
    ]


# ----------------------------------------------------------------------------
# 3. EXIF orientation: boxes are in the frame the App shows
# ----------------------------------------------------------------------------
def _exif_jpeg(path, orientation=6, size=(96, 48)):
    """A JPEG whose raw pixels are ``size`` (W x H), with an orientation tag."""
    rng = np.random.default_rng(0)
    raw = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw.save(path, quality=95, exif=exif.tobytes())
    return str(path)


@pytest.mark.fiftyone
def test_exif_rotated_jpeg_boxes_overlay_the_displayed_image(tmp_path, encoder):
    import fiftyone.core.metadata as fom

    path = _exif_jpeg(tmp_path / "rotated.jpg")
    displayed = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert displayed.size == (48, 96)
    meta = fom.ImageMetadata.build_for(path)  # what FiftyOne and the App use
    assert (meta.width, meta.height) == displayed.size

    clf = _classifier(encoder)
    pred = clf.predict([path])[0]
    assert (pred.width, pred.height) == displayed.size
    # the views fed to the model are crops of the displayed image
    (item,) = clf.preparer([0], [path], [path])
    boxes = clf.crop_boxes(*displayed.size, path)
    assert torch.equal(item.boxes, boxes) and torch.equal(torch.from_numpy(pred.boxes), boxes)
    expected = np.stack(
        [np.asarray(clf.plan.pil_stage(displayed))]
        + [np.asarray(clf.plan.pil_stage(displayed.crop(tuple(b)))) for b in boxes.tolist()]
    )
    assert np.array_equal(item.pixels.numpy(), expected)

    raw = _classifier(encoder, exif_transpose=False).predict([path])[0]
    assert (raw.width, raw.height) == (96, 48)  # the reference's raw frame


@pytest.mark.fiftyone
def test_run_records_which_orientation_rule_ran(fo_dataset, tmp_path, encoder):
    from bifta_plugin.sdk import records
    path = _exif_jpeg(tmp_path / "rotated.jpg")
    ds = fo_dataset([(path, "cat")])
    ds.compute_metadata()
    kw = dict(encoder=encoder, num_candidates=4, max_views=4, num_workers=0, crop_mode="exact")
    _sdk_run(ds, list(DESCRIPTIONS), DESCRIPTIONS, **kw)
    _sdk_run(ds, list(DESCRIPTIONS), DESCRIPTIONS, label_field="raw",
              exif_transpose=False, **kw)
    assert records.get_bifta_run_info(ds, "bifta")["runtime"]["exif_transpose"] is True
    assert records.get_bifta_run_info(ds, "raw")["runtime"]["exif_transpose"] is False
    sample = ds.first()
    # relative boxes are drawn on the image as the App shows it
    w, h = sample.metadata.width, sample.metadata.height
    assert (w, h) == (48, 96)
    for det in sample["bifta_crops"].detections:
        x, y, bw, bh = det.bounding_box
        assert 0 <= x and 0 <= y and x + bw <= 1 + 1e-9 and y + bh <= 1 + 1e-9
        assert abs(bw * w - bh * h) <= 1.0  # square crops in displayed pixels


# ----------------------------------------------------------------------------
# 4. 16-bit and other high-bit-depth images keep their contrast
# ----------------------------------------------------------------------------
def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    from bifta_plugin.engine import decode

    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    opened = Image.open(path)
    assert opened.mode.startswith("I")
    assert (np.asarray(opened.convert("RGB")) == 255).mean() > 0.9  # PIL's clipping
    rgb = np.asarray(decode.open_rgb(str(path)))
    assert rgb.shape == (48, 64, 3)
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01 and 120 < rgb.mean() < 135


@pytest.mark.parametrize("mode", ["I;16B", "I", "F"])
def test_other_high_bit_modes_use_their_range(mode):
    from bifta_plugin.engine import decode

    values = np.linspace(1000, 5000, 32 * 16).reshape(16, 32)
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (32, 16), values.astype(">u2").tobytes())
    else:
        image = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode)
    assert image.mode == mode
    rgb = np.asarray(decode.to_rgb(image))[..., 0].astype(int)
    if mode == "I;16B":  # a 16-bit format: its full range
        assert np.abs(rgb - np.round(values / 257.0)).max() <= 1
    else:  # no nominal range: min..max
        assert rgb.min() == 0 and rgb.max() == 255


def test_16bit_image_classifies_like_its_8bit_version(tmp_path, encoder):
    ramp = (np.indices((80, 60)).sum(0) * 400).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    Image.fromarray(np.round(ramp / 257.0).astype(np.uint8)).save(tmp_path / "gray8.png")
    clf = _classifier(encoder)
    p16, p8 = clf.predict(  # one key: the same crops for both files
        [str(tmp_path / "gray16.png"), str(tmp_path / "gray8.png")], keys=["ramp", "ramp"]
    )
    assert p16.ok and (p16.width, p16.height) == (60, 80)
    assert np.allclose(p16.scores, p8.scores, atol=1e-5)


# ----------------------------------------------------------------------------
# 5. Large JPEGs: explicit reduced-size decode, and a warning in exact mode
# ----------------------------------------------------------------------------
def _large_jpeg(path, size=(1600, 1200)):
    from skimage import data as skdata

    Image.fromarray(skdata.astronaut()).resize(size, Image.BICUBIC).save(path, quality=92)
    return str(path)


def test_jpeg_draft_decodes_reduced_but_keeps_the_full_frame(tmp_path, encoder):
    from bifta_plugin.engine import decode

    path = _large_jpeg(tmp_path / "big.jpg")
    clf = _classifier(encoder, jpeg_draft=True)
    need = int(np.ceil(clf.plan.size / clf.config.min_scale))  # smallest crop keeps S px
    decoded = decode.decode_image(path, draft_short_side=need)
    assert (decoded.width, decoded.height) == (1600, 1200)
    assert decoded.image.width < 1600 and min(decoded.image.size) >= need

    full, draft = _classifier(encoder).predict([path])[0], clf.predict([path])[0]
    assert (draft.width, draft.height) == (full.width, full.height) == (1600, 1200)
    assert np.array_equal(draft.boxes, full.boxes)  # the same crops, full-frame pixels
    # a reduced decode, so scores move a little (not the reference decode)
    assert np.abs(draft.scores - full.scores).max() < 0.05


def test_exact_mode_warns_once_for_large_images(tmp_path, encoder, monkeypatch, caplog):
    from bifta_plugin.engine import decode

    path = _large_jpeg(tmp_path / "big.jpg", size=(400, 300))
    monkeypatch.setattr(decode, "LARGE_IMAGE_PIXELS", 100_000)
    monkeypatch.setattr(decode, "_warned", False)
    with caplog.at_level(logging.WARNING, logger=decode.__name__):
        _classifier(encoder).predict([path, path])
    warnings = [r for r in caplog.records if "crop_mode='fast'" in r.getMessage()]
    assert len(warnings) == 1 and "big.jpg" in warnings[0].getMessage()


# ----------------------------------------------------------------------------
# 6. Per-class score fields are declared in one step
# ----------------------------------------------------------------------------
@pytest.mark.fiftyone
def test_fifty_class_fields_are_declared_with_one_reload(fo_dataset, sample_images, monkeypatch):
    import fiftyone as fo
    from bifta_plugin.sdk import writing
    from bifta_plugin.sdk.labels import field_names, safe_field_names

    classes = [f"class {i}" for i in range(50)]
    ds = fo_dataset(sample_images[:2])
    reloads = []
    original = fo.Dataset._reload

    def counting(self, *args, **kwargs):
        reloads.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fo.Dataset, "_reload", counting)
    fields = {k: v for k, v in field_names("bifta").items() if k in ("label", "crops", "scores", "error")}
    writing._declare_fields(ds, fields, safe_field_names(classes), get_config("bifta"))
    monkeypatch.undo()
    schema = ds.get_field_schema(flat=True)
    assert all(f"bifta_scores.class_{i}" in schema for i in range(50))
    # label, its 2 attributes, crops, its 2 attributes, scores with all
    # classes, error: 8 schema changes, whatever the number of classes
    assert len(reloads) <= 8, f"{len(reloads)} dataset reloads"
    writing._declare_fields(ds, fields, safe_field_names(classes), get_config("bifta"))  # idempotent


# ----------------------------------------------------------------------------
# 7. The truncation report names the encoder's own context length
# ----------------------------------------------------------------------------
@pytest.mark.fiftyone
def test_truncation_report_uses_the_encoders_context(fo_dataset, sample_images, encoder):
    assert encoder.context_length == 16  # the tiny test model
    long = "a " + " ".join(["very"] * 30) + " furry cat"
    descriptions = dict(DESCRIPTIONS, cat=[long, "a small furry pet"])
    ds = fo_dataset(sample_images[:1])
    result = _sdk_run(ds, list(descriptions), descriptions, encoder=encoder,
                       num_candidates=3, max_views=3, num_workers=0)
    assert "(16 tokens)" in result.descriptions_report
    assert "77" not in result.descriptions_report


# ----------------------------------------------------------------------------
# 8. score_field: the safe field name of a class
# ----------------------------------------------------------------------------
@pytest.mark.fiftyone
def test_score_field_maps_a_class_to_its_filterable_path(fo_dataset, sample_images, encoder):
    from fiftyone import ViewField as F

    import bifta_plugin
    from bifta_plugin.sdk import records
    classes = ["t-shirt", "Golden Retriever", "cat"]
    ds = fo_dataset(sample_images[:2])
    _sdk_run(ds, classes, method="clip", encoder=encoder, num_workers=0)
    assert ds.match(F("bifta_scores.t-shirt") > 0).count() == 0  # the trap
    path = bifta_plugin.score_field(ds, "bifta", "t-shirt")
    assert path == "bifta_scores.t_shirt"
    assert ds.match(F(path) > 0).count() == 2
    info = records.get_bifta_run_info(ds, "bifta")
    assert records.score_field(info, None, "Golden Retriever") == "bifta_scores.golden_retriever"
    with pytest.raises(ValueError, match="not a class"):
        records.score_field(ds, "bifta", "dog")
    assert "score_field(" in README and "t_shirt" in README


# ----------------------------------------------------------------------------
# 9. Descriptions provenance: the file's own SHA-256 and its absolute path
# ----------------------------------------------------------------------------
@pytest.mark.fiftyone
def test_descriptions_record_the_files_sha256_and_absolute_path(
    capsys, fo_dataset, sample_images, tmp_path, monkeypatch, encoder
):
    from bifta_plugin.sdk import records
    (tmp_path / "d.json").write_text(json.dumps(DESCRIPTIONS, indent=4) + "\n")
    file_sha = hashlib.sha256((tmp_path / "d.json").read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    ds = fo_dataset(sample_images[:1])
    code, out, err = _main(
        ["classify", "--dataset", ds.name, "--classes", *DESCRIPTIONS, "--descriptions",
         "d.json", "--method", "descriptions", *TINY, "--pretrained", "none", *FAST],
        capsys,
    )
    assert code == 0, err
    cli = records.get_bifta_run_info(ds, "bifta")["descriptions"]
    _sdk_run(ds, list(DESCRIPTIONS), "d.json", method="descriptions", encoder=encoder,
              label_field="sdk", num_workers=0)
    sdk = records.get_bifta_run_info(ds, "sdk")["descriptions"]
    for recorded in (cli, sdk):
        assert recorded["sha256"] == file_sha
        assert recorded["source"] == str(tmp_path / "d.json")
        assert os.path.isabs(recorded["source"])
    assert cli["content_sha256"] == sdk["content_sha256"] != file_sha
    assert f"sha256 {file_sha[:12]}" in out


# ----------------------------------------------------------------------------
# 10. The README says which collections run_bifta accepts
# ----------------------------------------------------------------------------
@pytest.mark.fiftyone
def test_readme_matches_the_collections_run_bifta_accepts(fo_dataset, sample_images, encoder):
    assert "# or any view" not in README
    sdk_example = README[README.index("## Python SDK"):README.index("`dataset.apply_model`")]
    assert "to_patches" in sdk_example and "video" in sdk_example and "clips" in sdk_example
    ds = fo_dataset(sample_images[:2])
    kw = dict(method="clip", encoder=encoder, num_workers=0)
    _sdk_run(ds.limit(1), ["cat", "dog"], **kw)  # a view of the images: fine
    crops = _sdk_run(ds, ["cat", "dog"], method="wca", descriptions={"cat": ["a"], "dog": ["b"]},
                      encoder=encoder, num_workers=0, label_field="w", num_candidates=3)
    assert crops.num_processed == 2
    # a patches view: its objects are classified (tests/test_patches.py)
    patches = _sdk_run(ds.to_patches("w_crops").limit(2), ["cat", "dog"], label_field="p", **kw)
    assert patches.unit == "objects" and patches.num_processed == 2
    # frames and clips views are refused: tests/test_frames.py


# ----------------------------------------------------------------------------
# 11. scripts/install.sh makes `import bifta_plugin` work outside the checkout
# ----------------------------------------------------------------------------
def _site_packages(python) -> str:
    return subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()


@pytest.mark.slow
def test_install_script_makes_the_package_importable_anywhere(tmp_path):
    venv = tmp_path / "venv"
    # no pip/setuptools of its own: the project's come through the .pth below
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = str(venv / "bin" / "python")
    # the project's packages, without reinstalling them: a .pth to its site-packages
    Path(_site_packages(vpy), "project-venv.pth").write_text(_site_packages(sys.executable) + "\n")
    # a current requirements stamp, so install.sh skips `pip install -r`
    reqs = (REPO_ROOT / "requirements.txt").read_bytes() + (REPO_ROOT / "requirements-dev.txt").read_bytes()
    (venv / ".bifta-install-stamp-requirements-dev").write_text(hashlib.sha256(reqs).hexdigest() + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    check = [vpy, "-c", "import bifta_plugin; print(bifta_plugin.__file__)"]
    before = subprocess.run(check, cwd=outside, capture_output=True, text=True)
    assert before.returncode != 0 and "No module named 'bifta_plugin'" in before.stderr

    env = dict(os.environ, BIFTA_VENV=str(venv))
    run = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "install.sh")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pip install --no-deps -e" in run.stdout
    after = subprocess.run(check, cwd=outside, capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    assert Path(after.stdout.strip()).resolve() == (REPO_ROOT / "bifta_plugin" / "__init__.py").resolve()

    again = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "install.sh")], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "importable from anywhere" in again.stdout


# ----------------------------------------------------------------------------
# 12. Throughput of slow runs is readable
# ----------------------------------------------------------------------------
def test_summary_gives_seconds_per_image_for_slow_runs():
    slow = RunResult(run_key="r", label_field="bifta", num_samples=4, num_processed=4,
                     elapsed_s=1000.0, images_per_s=0.004)
    assert "250 s/image" in slow.summary() and "0.0 images/s" not in slow.summary()
    fast = RunResult(run_key="r", label_field="bifta", images_per_s=12.345)
    assert "12.3 images/s" in fast.summary()
    assert "2.5 images/s" in RunResult(run_key="r", label_field="b", images_per_s=2.5).summary()


# ----------------------------------------------------------------------------
# 13. CLI wording
# ----------------------------------------------------------------------------
@pytest.mark.fiftyone
def test_cli_refusals_name_cli_flags_and_delete_run_reports_everything(
    capsys, fo_dataset, sample_images
):
    ds = fo_dataset(sample_images[:2])
    args = ["classify", "--dataset", ds.name, "--classes", "cat", "astronaut",
            "--method", "clip", *TINY, "--pretrained", "none", *FAST,
            "--gt-field", "ground_truth"]
    code, _, err = _main(args, capsys)
    assert code == 0, err
    # other config (an option clip reads), same key
    code, _, err = _main(args[:-2] + ["--set", "anchor_template=a picture of a {}."], capsys)
    assert code == 2 and "--overwrite" in err and "overwrite=True" not in err
    assert "--label-field / --run-key / --eval-key" in err

    code, out, err = _main(["delete-run", "--dataset", ds.name, "bifta", "--keep-fields"], capsys)
    assert code == 0, err
    assert "deleted evaluation 'eval_bifta'" in out
    assert "kept fields" in out and "--overwrite" in out
    code, _, err = _main(args, capsys)  # the kept fields now belong to no run
    assert code == 2 and "pass --overwrite" in err
    code, _, err = _main(args + ["--overwrite"], capsys)
    assert code == 0, err


def test_demo_readme_and_operator_use_the_same_label():
    pytest.importorskip("fiftyone.operators")
    from bifta_plugin.ui.operators import RunBifta

    label = RunBifta().config.label
    demo = (REPO_ROOT / "bifta_plugin" / "cli" / "demo.py").read_text(encoding="utf-8")
    assert f"'{label}'" in demo
    assert f"**{label}**" in README
    assert "**Run BiFTA**" not in README
