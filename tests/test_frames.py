"""Video frames through run_bifta: small real videos made with ffmpeg in the
test, FiftyOne's own video reader, real MongoDB, tiny model."""

import shutil
import subprocess

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.core.fields as fof

from bifta_plugin.sdk import frames as bf
from bifta_plugin.sdk import records
from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions, TargetSpec
from bifta_plugin.sdk.run import run_bifta

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")

CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {
    "cat": ["a cat with whiskers"],
    "astronaut": ["a person in a space suit"],
    "coffee": ["a cup of coffee"],
}
FAST = dict(num_candidates=4, max_views=4)


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two 10-frame MP4s (96 x 64, 5 fps): ffmpeg's test pattern and a zoom
    into the cat photo."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("videos")
    Image.fromarray(data.chelsea()).save(folder / "cat.png")
    common = ["-t", "2", "-r", "5", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-y"]
    commands = [
        ["-f", "lavfi", "-i", "testsrc=size=96x64:rate=5", *common, folder / "pattern.mp4"],
        ["-loop", "1", "-i", folder / "cat.png", "-vf",
         "scale=96:64,zoompan=z='1+0.05*on':d=1:s=96x64:fps=5", *common, folder / "cat.mp4"],
    ]
    for args in commands:
        subprocess.run(["ffmpeg", "-loglevel", "error", *map(str, args)], check=True)
    return [str(folder / "pattern.mp4"), str(folder / "cat.mp4")]


@pytest.fixture
def ds(fo_dataset, videos):
    dataset = fo_dataset()
    dataset.add_samples([fo.Sample(filepath=p) for p in videos])
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


def _frame_values(ds, path):
    return [dict(zip(n, v)) for n, v in zip(*ds.values(["frames.frame_number", path]))]


def test_every_nth_frame_is_classified(ds, encoder):
    result = _run(ds, encoder, frame_step=3)
    assert result.unit == "frames" and result.num_samples == 8  # frames 1, 4, 7, 10
    assert result.num_processed == 8 and result.num_failed == 0
    assert ds.get_field("frames.bifta").document_type is fo.Classification
    assert ds.get_field("frames.bifta_crops").document_type is fo.Detections
    assert isinstance(ds.get_field("frames.bifta_error"), fof.StringField)
    for sample in ds:
        assert sorted(sample.frames.keys()) == [1, 4, 7, 10]
        for frame in sample.frames.values():
            assert frame.bifta.label in CLASSES and len(frame.bifta.logits) == 3
            assert frame.bifta_crops.detections and frame.bifta_error is None


def test_frames_do_not_depend_on_batch_size(ds, encoder):
    # crops are keyed by (sample id, frame number): the same samples, two runs
    _run(ds, encoder, batch_size=1, frame_step=2, output=OutputSpec("a"))
    _run(ds, encoder, batch_size=5, frame_step=2, output=OutputSpec("b"))
    for fa, fb in zip(_frame_values(ds, "frames.a.logits"), _frame_values(ds, "frames.b.logits")):
        assert fa.keys() == fb.keys() == {1, 3, 5, 7, 9}
        for n in fa:
            np.testing.assert_allclose(fa[n], fb[n], rtol=1e-5, atol=1e-5)


def test_existing_frames_only(ds, encoder):
    sample = ds.first()
    sample.frames[2] = fo.Frame(note="keep")
    sample.frames[6] = fo.Frame()
    sample.save()
    result = _run(ds, encoder, existing_frames=True)
    assert result.num_processed == 2
    sample.reload()
    assert sorted(sample.frames.keys()) == [2, 6] and sample.frames[2].note == "keep"
    assert sample.frames[2].bifta is not None


def test_clip_summary_and_embeddings(ds, encoder):
    _run(ds, encoder, frame_step=2,
         output=OutputSpec("bifta", clip_field="clip", embeddings_field="emb"))
    assert ds.get_field("clip").document_type is fo.Classification
    assert isinstance(ds.get_field("frames.emb"), fof.VectorField)
    for sample in ds:
        frames = list(sample.frames.values())
        logits = np.array([f.bifta.logits for f in frames])
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        mean = probs.mean(0)
        assert sample.clip.label == CLASSES[int(mean.argmax())]
        assert sample.clip.confidence == pytest.approx(mean.max(), rel=1e-5)
        assert sample.clip.num_frames == 5
        labels = [f.bifta.label for f in frames]
        assert sample.clip.majority_fraction == pytest.approx(
            labels.count(sample.clip.majority) / 5)
        emb = np.stack([f.emb for f in frames])
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_clip_summary_rule():
    doc = bf.clip_summary(["a", "b", "b", None], [[3, 0], [0, 0.1], [0, 0.2], None], ["a", "b"])
    assert doc["label"] == "a" and doc["majority"] == "b" and doc["num_frames"] == 3
    assert doc["majority_fraction"] == pytest.approx(2 / 3)
    assert bf.clip_summary([None], [None], ["a"]) is None


def test_resume_and_evaluation_on_frames(ds, encoder):
    _run(ds, encoder, frame_step=5)  # frames 1, 6
    sample = ds.first()
    sample.frames[6].bifta = None
    sample.save()
    for s in ds:
        for n, frame in s.frames.items():
            frame["gt"] = fo.Classification(label="cat")
        s.save()
    result = run_bifta(
        ds, CLASSES, DESCRIPTIONS, method="bifta", encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(num_workers=0, skip_existing=True),
        output=OutputSpec("bifta", gt_field="frames.gt"), target=TargetSpec(frame_step=5),
        **FAST,
    )
    assert result.num_processed == 1 and result.num_skipped == 3
    assert result.num_evaluated == 4 and ds.has_evaluation("eval_bifta")
    labels = ds.values("frames.bifta.label", unwind=True)
    assert result.accuracy == pytest.approx(np.mean([lab == "cat" for lab in labels]))


def test_unreadable_video_is_a_failure_and_the_run_goes_on(ds, encoder, tmp_path, videos):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    ds.add_sample(fo.Sample(filepath=str(bad), metadata=fo.VideoMetadata(total_frame_count=3)))
    result = _run(ds, encoder, frame_step=5)
    assert result.num_processed == 4 and result.num_failed == 1  # its frame 1 of 3
    assert any("cannot read video" in message for _, message in result.failures)


def test_delete_run_removes_frame_fields(ds, encoder):
    _run(ds, encoder, frame_step=5, output=OutputSpec("bifta", clip_field="clip"))
    records.delete_bifta_run(ds, "bifta")
    assert ds.get_field("frames.bifta") is None and ds.get_field("clip") is None


@pytest.mark.parametrize(
    "target, output, message",
    [
        (dict(frame_step=0), {}, "frame_step"),
        (dict(patches_field="x"), {}, "image collections"),
        ({}, dict(gt_field="ground_truth"), "frame-level"),
    ],
)
def test_bad_frame_options_are_refused(ds, target, output, message):
    from bifta_plugin.sdk.plan import make_plan

    with pytest.raises(ValueError, match=message):
        make_plan(ds, CLASSES, DESCRIPTIONS, output=OutputSpec(**output), target=TargetSpec(**target))


def test_frame_options_on_images_are_refused(fo_dataset, sample_images):
    from bifta_plugin.sdk.plan import make_plan

    images = fo_dataset(sample_images[:1])
    with pytest.raises(ValueError, match="for video collections"):
        make_plan(images, CLASSES, DESCRIPTIONS, target=TargetSpec(frame_step=2))


def test_cli_classifies_frames(capsys, ds, tiny_model_name):
    from tiny_model import TINY_CONFIG_PATH

    from bifta_plugin.cli.commands import main

    code = main(["classify", "--dataset", ds.name, "--classes", "cat", "astronaut",
                 "--method", "clip", "--model", tiny_model_name, "--model-config",
                 str(TINY_CONFIG_PATH), "--pretrained", "none", "--device", "cpu",
                 "--frame-step", "4", "--clip-field", "clip", "--label-field", "f"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "6 processed" in out and "of 6 frames" in out
    ds.reload()
    assert ds.count("frames.f") == 6 and ds.count("clip") == 2


def test_a_frames_view_is_refused(ds, tmp_path):
    from bifta_plugin.sdk.plan import make_plan

    frames = ds.to_frames(sample_frames=True, max_fps=1, output_dir=str(tmp_path / "frames"))
    with pytest.raises(ValueError, match="generated view \\(frames or clips\\)"):
        make_plan(frames, CLASSES, DESCRIPTIONS)


def test_sharded_video_run_counts_frames_and_equals_one_run(ds, encoder):
    """Two shards (one video each), one after the other in this process:
    the merged result counts frames, the labels are one run's."""
    whole = _run(ds, encoder, frame_step=3, output=OutputSpec("whole"))
    shards = [
        run_bifta(
            ds, CLASSES, DESCRIPTIONS, method="bifta", encoder=EncoderSpec(instance=encoder),
            runtime=RunOptions(batch_size=4, num_workers=0, crop_mode="exact", shard=(i, 2)),
            output=OutputSpec("sharded"), target=TargetSpec(frame_step=3), **FAST,
        )
        for i in range(2)
    ]
    assert [r.num_samples for r in shards] == [4, 8]  # shard 0's frames; the merged total
    assert shards[-1].num_processed == whole.num_processed == 8
    assert records.get_bifta_run_info(ds, "sharded")["results"]["num_samples"] == 8
    ds.reload()
    assert _frame_values(ds, "frames.sharded.label") == _frame_values(ds, "frames.whole.label")
