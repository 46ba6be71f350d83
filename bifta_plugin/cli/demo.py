"""``python -m bifta_plugin demo``: ten scikit-image photos, one run, a report."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.methods import get_method
from .errors import CliError
from .output import banner as _banner
from .output import print_table as _print_table

DEMO_DATASET = "bifta-demo"
DEMO_DESCRIPTIONS = Path(__file__).parent / "data" / "demo_descriptions.json"
#: (skimage.data function, index into its result or None, file name, label)
DEMO_IMAGES = (
    ("chelsea", None, "cat.jpg", "cat"),
    ("astronaut", None, "astronaut.jpg", "astronaut"),
    ("coffee", None, "coffee.jpg", "coffee"),
    ("rocket", None, "rocket.jpg", "rocket"),
    ("stereo_motorcycle", 0, "motorcycle-left.jpg", "motorcycle"),
    ("stereo_motorcycle", 1, "motorcycle-right.jpg", "motorcycle"),
    ("horse", None, "horse.png", "horse"),
    ("camera", None, "cameraman.png", "camera"),
    ("coins", None, "coins.png", "coins"),
    ("clock", None, "clock.png", "clock"),
)
#: crops per image for the demo on CPU (the methods' default is 100)
DEMO_CPU_CANDIDATES = 32
PANELS = ("bifta_mispredictions", "bifta_explanation")


def cmd_demo(args) -> int:
    from ..sdk.options import EncoderSpec, OutputSpec, RunOptions
    from ..sdk.run import run_bifta

    import fiftyone as fo

    images = DEMO_IMAGES[: args.limit] if args.limit else DEMO_IMAGES
    if not images:
        raise CliError("--limit must be at least 1")
    media_dir = Path(
        args.media_dir or Path(fo.config.default_dataset_dir) / DEMO_DATASET
    )
    dataset = _demo_dataset(
        args.dataset, _write_demo_images(images, media_dir)
    )
    classes = list(dict.fromkeys(label for *_, label in DEMO_IMAGES))
    encoder = _demo_encoder(args)
    spec = get_method(args.method)
    overrides = {}
    num_candidates = _demo_num_candidates(args, encoder)
    if num_candidates is not None:
        overrides["num_candidates"] = num_candidates
    _print_demo_settings(args, encoder, num_candidates, len(dataset), classes)
    result = run_bifta(
        dataset,
        classes=classes,
        descriptions=(
            str(DEMO_DESCRIPTIONS)
            if spec.uses_descriptions
            else None
        ),
        method=args.method,
        encoder=EncoderSpec(instance=encoder),
        runtime=RunOptions(
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            crop_mode=args.crop_mode,
        ),
        output=OutputSpec("bifta", gt_field="ground_truth"),
        overwrite=True,
        **overrides,
    )
    _print_demo_report(dataset, result, encoder)
    return 0


def _write_demo_images(images, media_dir: Path) -> list[tuple[str, str]]:
    """Write the scikit-image photos to ``media_dir``; returns (path, label)."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    media_dir.mkdir(parents=True, exist_ok=True)
    cache = {}
    out = []
    for func, index, name, label in images:
        if func not in cache:
            cache[func] = getattr(skdata, func)()
        array = cache[func] if index is None else cache[func][index]
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        image = Image.fromarray(np.ascontiguousarray(array))
        path = media_dir / name
        if name.endswith(".jpg"):
            image.convert("RGB").save(path, quality=92)
        else:
            image.save(path)
        out.append((str(path), label))
    return out


def _demo_dataset(name: str, samples):
    import fiftyone as fo

    dataset = fo.Dataset(name, persistent=True, overwrite=True)
    dataset.add_samples(
        [
            fo.Sample(
                filepath=path, ground_truth=fo.Classification(label=label)
            )
            for path, label in samples
        ]
    )
    dataset.classes["ground_truth"] = sorted({label for _, label in samples})
    dataset.save()
    return dataset


def _demo_encoder(args):
    """The requested encoder; random weights (LOUDLY) when they cannot load."""
    from ..engine.encoders import create_encoder, is_random_weights

    def create(pretrained):
        return create_encoder(
            args.model_name,
            pretrained,
            device=args.device,
            precision=args.precision,
        )

    if is_random_weights(args.model_name, args.pretrained):
        _banner(
            f"RANDOM WEIGHTS (--pretrained {args.pretrained})",
            [
                f"{args.model_name} runs with randomly initialised weights: the",
                "pipeline runs end to end, but the predictions are MEANINGLESS.",
                "Run with the default --pretrained openai for real predictions.",
            ],
        )
        return create(None)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in (
        "1",
        "true",
        "yes",
    ):
        print(
            f"Loading {args.model_name} ({args.pretrained}); the first run downloads "
            "the weights (offline? set HF_HUB_OFFLINE=1 to fail fast)",
            file=sys.stderr,
        )
    try:
        return create(args.pretrained)
    except RuntimeError as e:
        _banner(
            "COULD NOT LOAD THE PRETRAINED WEIGHTS",
            [
                f"model {args.model_name!r}, pretrained {args.pretrained!r}",
                f"reason: {e}",
                "",
                "Running with RANDOM weights instead, so that the pipeline runs",
                "end to end: the predictions below are MEANINGLESS.",
                "Connect to the internet (or put the weights in the Hugging Face",
                "cache, or pass --pretrained /path/to/checkpoint.pt) and rerun.",
            ],
        )
        return create(None)


def _demo_num_candidates(args, encoder) -> int | None:
    if not get_method(args.method).uses_crops:
        return args.num_candidates
    if args.num_candidates is not None:
        return args.num_candidates
    return DEMO_CPU_CANDIDATES if str(encoder.device) == "cpu" else None


def _print_demo_settings(
    args, encoder, num_candidates, num_images, classes
) -> None:
    from ..core.config import get_config

    weights = (
        "RANDOM weights"
        if encoder.is_random
        else f"weights {encoder.pretrained}"
    )
    crops = "no crops (global view only)"
    if get_method(args.method).uses_crops:
        default = get_config(args.method).num_candidates
        crops = f"{num_candidates or default} crops per image"
        if num_candidates is not None and num_candidates != default:
            crops += (
                f" (method default {default}; pass --num-candidates {default})"
            )
    print(
        f"BiFTA demo: {num_images} photos, {len(classes)} classes, method "
        f"{args.method}, model {encoder.model_name} ({weights}), device "
        f"{encoder.device}, {crops}"
    )


def _print_demo_report(dataset, result, encoder) -> None:
    paths, truth, labels, confidences = dataset.values(
        ["filepath", "ground_truth.label", "bifta.label", "bifta.confidence"]
    )
    rows = [("IMAGE", "GROUND TRUTH", "PREDICTION", "CONFIDENCE", "")]
    for path, gt, label, conf in zip(paths, truth, labels, confidences):
        rows.append(
            (
                os.path.basename(path),
                str(gt),
                str(label),
                "-" if conf is None else f"{conf:.3f}",
                "ok" if label == gt else "WRONG",
            )
        )
    print()
    _print_table(rows)
    print()
    if result.accuracy is not None:
        print(
            f"Accuracy: {result.accuracy:.3f} ({result.num_evaluated} photos, eval key {result.eval_key!r})"
        )
    if encoder.is_random:
        print("(random weights: these predictions are meaningless)")
    print(result.summary())
    print(
        "\nOpen the results in the FiftyOne App:\n"
        f"  fiftyone app launch {dataset.name}\n"
        "or from Python:\n"
        f"  import fiftyone as fo; session = fo.launch_app(fo.load_dataset({dataset.name!r}))\n"
        'With the plugin installed (ln -s <this repo> "$(fiftyone config plugins_dir)/bifta"),\n'
        f"open the panels {', '.join(PANELS)} from the App's '+' tab, and run\n"
        "'BiFTA: zero-shot classify' from the operator browser (backtick key)."
    )
