"""Command line: ``python -m bifta_plugin {classify,folder,demo,runs,info,delete-run,describe}``.

Examples::

    # classify an existing dataset into typed classes, with descriptions
    python -m bifta_plugin classify --dataset my-ds --classes cat dog \\
        --descriptions pets.json --gt-field ground_truth

    # build a dataset from a folder of images (subfolders = classes) and classify
    python -m bifta_plugin folder ~/photos --dataset photos --labels-from-subdirs

    # the demo: real photos shipped with scikit-image, BiFTA, evaluation
    python -m bifta_plugin demo

    python -m bifta_plugin runs --dataset my-ds
    python -m bifta_plugin requeue --dataset my-ds bifta   # a sharded run's dead shards
    python -m bifta_plugin delete-run --dataset my-ds bifta

    # class descriptions from an LLM (API key from BIFTA_LLM_API_KEY only)
    python -m bifta_plugin describe --classes cat dog --output pets.json

Every option maps to a keyword of :func:`bifta_plugin.sdk.run.run_bifta` or
an attribute of one of its option groups (``--label-field`` ->
``OutputSpec.label_field``, ...). ``--model-config FILE.json``
registers a custom open_clip model config (its name is the file stem), e.g.
to use a local architecture together with ``--pretrained /path/weights.pt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from .. import __version__
from ..core import defaults
from ..core.config import get_config
from ..core.methods import descriptions_needed_error, get_method, list_methods
from .demo import DEMO_CPU_CANDIDATES, DEMO_DATASET, cmd_demo
from .errors import CliError, cli_wording
from .output import notice as _notice
from .output import print_table as _print_table

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------
def main(argv=None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:  # FiftyOne configures its own loggers: touch only ours
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(levelname)s %(name)s: %(message)s")
        )
        package_logger = logging.getLogger(__package__)
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)
    try:
        _register_model_configs(getattr(args, "model_config", None))
        return args.func(args)
    except (CliError, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {cli_wording(str(e))}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bifta_plugin",
        description="BiFTA / WCA zero-shot CLIP classification for FiftyOne.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log more"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND"
    )

    p = sub.add_parser(
        "classify", help="classify an existing FiftyOne dataset"
    )
    p.add_argument("--dataset", required=True, help="dataset name")
    _add_classes_args(p, required=True)
    _add_run_args(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "folder",
        help="build a dataset from a folder of images, then classify it",
    )
    p.add_argument("directory", help="folder of images (searched recursively)")
    p.add_argument("--dataset", required=True, help="name of the new dataset")
    p.add_argument(
        "--labels-from-subdirs",
        action="store_true",
        help="subfolder names are the ground-truth classes (stored in "
        "'ground_truth', used as classes and for evaluation by default)",
    )
    p.add_argument(
        "--overwrite-dataset",
        action="store_true",
        help="replace an existing dataset of that name",
    )
    _add_classes_args(p, required=False)
    _add_run_args(p)
    p.set_defaults(func=cmd_folder)

    p = sub.add_parser(
        "demo", help="classify real photos shipped with scikit-image"
    )
    p.add_argument(
        "--dataset",
        default=DEMO_DATASET,
        help=f"dataset name (default {DEMO_DATASET}; replaced)",
    )
    p.add_argument(
        "--media-dir",
        help="where to write the images (default <fiftyone dataset dir>/bifta-demo)",
    )
    p.add_argument("--method", default=defaults.METHOD, choices=list_methods())
    p.add_argument("--limit", type=int, help="use only the first N photos")
    _add_model_args(p)
    _add_runtime_args(p)
    p.add_argument(
        "--num-candidates",
        type=int,
        help=f"crops per image (default: the method's 100 on a GPU, "
        f"{DEMO_CPU_CANDIDATES} on CPU to keep the demo quick)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("runs", help="list the BiFTA runs of a dataset")
    p.add_argument("--dataset", required=True)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("info", help="print a BiFTA run's provenance as JSON")
    p.add_argument("--dataset", required=True)
    p.add_argument("run_key")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "requeue",
        help="queue again the unfinished shards (stale, failed) of a sharded run",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("run_key")
    p.set_defaults(func=cmd_requeue)

    p = sub.add_parser(
        "delete-run", help="delete a BiFTA run and the fields it wrote"
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("run_key")
    p.add_argument(
        "--keep-fields", action="store_true", help="delete only the run record"
    )
    p.set_defaults(func=cmd_delete_run)

    p = sub.add_parser(
        "describe",
        help="write class descriptions with an OpenAI-compatible LLM "
        "(API key from BIFTA_LLM_API_KEY / OPENAI_API_KEY)",
    )
    _add_classes_args(p, required=True, field=False)
    p.add_argument(
        "--output", required=True, help="the .json file to write (also a cache)"
    )
    _add_llm_args(p)
    p.set_defaults(func=cmd_describe)
    _add_calibrate_parser(sub)
    return parser


# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------
def _add_classes_args(p, required: bool, field: bool = True) -> None:
    """--classes / --classes-file (/ --classes-field: needs a dataset)."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--classes", nargs="+", metavar="CLASS", help="class names"
    )
    group.add_argument(
        "--classes-file",
        help="class list: .txt (one per line), JSON or YAML list",
    )
    if field:
        group.add_argument(
            "--classes-field",
            help="use the labels of this Classification field (over the whole dataset)",
        )


def _add_llm_args(p, prefix: str = "") -> None:
    """Endpoint and sampling of description generation; ``prefix`` "llm-"
    beside classify's CLIP ``--model``. The API key is never an argument."""
    p.add_argument(
        f"--{prefix}base-url",
        help="LLM endpoint, e.g. http://localhost:11434/v1 (default: "
        "BIFTA_LLM_BASE_URL, else https://api.openai.com/v1)",
    )
    p.add_argument(
        f"--{prefix}model",
        help="LLM model name (default: BIFTA_LLM_MODEL, else gpt-4o-mini)",
    )
    p.add_argument(f"--{prefix}samples-per-prompt", type=int, default=10)
    p.add_argument(f"--{prefix}temperature", type=float, default=0.99)
    p.add_argument(
        f"--{prefix}prompt-context",
        help="a hint after the class name, e.g. 'a type of bird'",
    )


def _llm_kwargs(args, prefix: str = "") -> dict:
    """``generate_descriptions`` keywords from the arguments."""
    names = ("base_url", "model", "samples_per_prompt", "temperature", "prompt_context")
    return {name: getattr(args, prefix + name) for name in names}


def _add_model_args(p) -> None:
    p.add_argument(
        "--model",
        dest="model_name",
        default=defaults.MODEL_NAME,
        help=f"open_clip model name (default {defaults.MODEL_NAME})",
    )
    p.add_argument(
        "--pretrained",
        default=defaults.PRETRAINED,
        help="open_clip tag, or a local checkpoint file; 'none' = random "
        f"weights (default {defaults.PRETRAINED})",
    )
    p.add_argument(
        "--model-config",
        action="append",
        metavar="JSON",
        help="register a custom open_clip model config (name = file stem); repeatable",
    )


def _add_runtime_args(p) -> None:
    p.add_argument(
        "--device", default=defaults.DEVICE, help="auto, cpu, cuda, cuda:N or mps"
    )
    p.add_argument(
        "--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS
    )
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    p.add_argument(
        "--num-workers",
        type=int,
        help="image decoding workers (default: automatic)",
    )
    p.add_argument(
        "--crop-mode", default=defaults.CROP_MODE, choices=defaults.CROP_MODES
    )


def _add_run_args(p) -> None:
    p.add_argument("--method", default=defaults.METHOD, choices=list_methods())
    p.add_argument(
        "--descriptions",
        help="class descriptions file (JSON/YAML {class: [sentences]}, or "
        "templates); required by the methods that use descriptions",
    )
    p.add_argument(
        "--descriptions-format",
        default=defaults.DESCRIPTIONS_FORMAT,
        choices=defaults.DESCRIPTIONS_FORMATS,
    )
    g = p.add_argument_group(
        "description generation (API key from BIFTA_LLM_API_KEY / OPENAI_API_KEY)"
    )
    g.add_argument(
        "--generate-missing",
        action="store_true",
        help="first ask an OpenAI-compatible LLM for descriptions of the "
        "classes the --descriptions .json file lacks (created if missing)",
    )
    _add_llm_args(g, prefix="llm-")
    p.add_argument("--label-field", default=defaults.LABEL_FIELD)
    p.add_argument(
        "--gt-field", help="Classification field to evaluate against"
    )
    p.add_argument(
        "--eval-key", help="evaluation key (default eval_<run key>)"
    )
    p.add_argument("--run-key", help="run key (default: the label field)")
    g = p.add_argument_group("object patches (classify the objects of a Detections field)")
    g.add_argument(
        "--patches-field",
        help="classify every object of this Detections field instead of the images",
    )
    g.add_argument(
        "--output-patches-field",
        help="write into a new Detections field copying the objects (default: "
        "into the objects of --patches-field)",
    )
    g.add_argument(
        "--patch-padding", type=float, default=0.0,
        help="relative margin added on each side of a box (fraction of its size)",
    )
    g.add_argument(
        "--patch-min-size", type=int, default=defaults.PATCH_MIN_SIZE,
        help="smallest patch side in pixels; smaller objects get an error",
    )
    g = p.add_argument_group("video datasets (classify frames into frames.<label field>)")
    g.add_argument("--frame-step", type=int, default=1,
                   help="classify frames 1, 1+N, 1+2N, ... of each video")
    g.add_argument("--existing-frames", action="store_true",
                   help="classify only the frames already in the dataset")
    g.add_argument("--clip-field",
                   help="also write a per-video summary Classification (mean probability, majority)")
    p.add_argument(
        "--embeddings-field",
        help="also store each image's global embedding in this vector field "
        "(for FiftyOne Brain's similarity search and embeddings maps)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="only samples without a prediction (resume)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run/fields of that name",
    )
    p.add_argument(
        "--take-over",
        action="store_true",
        help="take the run's lease from the process running it (it stops)",
    )
    p.add_argument(
        "--shard",
        type=_shard_arg,
        metavar="I/K",
        help="run only shard I of the target split into K (e.g. a Slurm array task)",
    )
    _add_model_args(p)
    _add_runtime_args(p)
    p.add_argument(
        "--no-exif-transpose",
        dest="exif_transpose",
        action="store_false",
        help="ignore EXIF orientation (the reference's raw frame; default: "
        "apply it, as the App shows the image)",
    )
    p.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="decode large JPEGs at reduced size (fast; not the reference's "
        "full decode)",
    )
    g = p.add_argument_group(
        "method settings (default: the method's preset; a setting the "
        "method does not use is refused)"
    )
    for name, parse, help in CONFIG_ARGS:
        g.add_argument("--" + name.replace("_", "-"), type=parse, help=help)
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config field, e.g. --set protocol=resample (VALUE is JSON or a string)",
    )


def _float_or_off(text: str):
    return "off" if text.lower() == "off" else float(text)


def _int_or_off(text: str):
    return "off" if text.lower() == "off" else int(text)


#: config options with their own flag: (name, parser, help)
CONFIG_ARGS = (
    ("num_candidates", int, "crops drawn per image (wca, bifta)"),
    ("max_views", int, "crops kept per image (wca, bifta)"),
    ("iou_threshold", _float_or_off, "crop IoU filter, 0-1 or 'off' (bifta)"),
    ("desc_sim_threshold", _float_or_off, "description filter, 0-1 or 'off' (bifta)"),
    ("max_descriptions", _int_or_off, "descriptions kept per class, or 'off' (bifta)"),
    ("seed", int, "seed of the crop boxes (wca, bifta)"),
)


def _config_overrides(args) -> dict:
    overrides = {
        name: getattr(args, name)
        for name, _, _ in CONFIG_ARGS
        if getattr(args, name, None) is not None
    }
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set expects KEY=VALUE; got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def _register_model_configs(paths) -> None:
    """``open_clip.add_model_config`` for each ``--model-config`` file."""
    if not paths:
        return
    import open_clip

    for path in paths:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CliError(f"--model-config {path}: no such file")
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
        logger.info("registered open_clip model config %r", path.stem)


# ----------------------------------------------------------------------------
# classify / folder
# ----------------------------------------------------------------------------
def cmd_classify(args) -> int:
    dataset = _load_dataset(args.dataset)
    return _classify(dataset, args)


def cmd_folder(args) -> int:
    """Check everything first, then create the dataset, then classify.

    The dataset is imported under a temporary, non-persistent name; the run
    is planned against it (:func:`~bifta_plugin.sdk.plan.make_plan`, which
    writes nothing) and the encoder is built, and only then does it get its
    name (replacing an existing one with ``--overwrite-dataset``) and become
    persistent. A bad argument therefore leaves no dataset behind and the
    corrected command just works.
    """
    if args.labels_from_subdirs:
        if not (args.classes or args.classes_file or args.classes_field):
            args.classes_field = "ground_truth"
        if args.gt_field is None:
            args.gt_field = "ground_truth"
    elif not (args.classes or args.classes_file or args.classes_field):
        raise CliError(
            "pass --classes, --classes-file or --classes-field (or "
            "--labels-from-subdirs to use the subfolder names)"
        )
    kwargs = _run_kwargs(args)
    _check_new_dataset_name(args.dataset, args.overwrite_dataset)
    staged = _dataset_from_folder(args.directory, args.labels_from_subdirs)
    try:
        if args.generate_missing:  # the plan reads the completed file
            get_config(kwargs["method"], **_config_overrides(args))
            _generate_missing(staged, kwargs, args)
        _plan_run(staged, kwargs)
        encoder = kwargs["encoder"].build()  # a bad model or device fails here
    except BaseException:
        staged.delete()
        raise
    kwargs["encoder"] = dataclasses.replace(kwargs["encoder"], instance=encoder)
    dataset = _publish_dataset(staged, args.dataset, args.overwrite_dataset)
    print(f"Created dataset {dataset.name!r} with {len(dataset)} images")
    return _classify(dataset, args, kwargs=kwargs, generate=False)


def _classify(samples, args, kwargs=None, generate=None) -> int:
    from ..sdk.run import run_bifta

    kwargs = _run_kwargs(args) if kwargs is None else kwargs
    if args.generate_missing if generate is None else generate:
        _generate_missing(samples, kwargs, args)
    result = run_bifta(samples, **kwargs)
    if result.descriptions_report:
        print(result.descriptions_report)
    print(result.summary())
    if result.num_failed:
        where = (
            f"'{result.fields['error']}' attribute" if result.unit == "objects"
            else f"'{result.label_field}_error' field"
        )
        print(f"{result.num_failed} {result.unit} failed; see the {where}", file=sys.stderr)
    return 0


def _plan_run(samples, kwargs: dict) -> None:
    """Every check of ``run_bifta(samples, **kwargs)`` that needs no model."""
    from ..sdk.plan import make_plan

    named = (
        "method", "classes_field", "descriptions_format", "runtime", "output", "target",
        "overwrite",
    )
    rest = {k: v for k, v in kwargs.items() if k not in ("encoder", "classes", "descriptions")}
    make_plan(
        samples,
        kwargs.get("classes"),
        kwargs.get("descriptions"),
        **{k: rest.pop(k) for k in named if k in rest},
        config_overrides=rest,
    ).require_allowed()


def _generate_missing(samples, kwargs: dict, args) -> None:
    """Complete the --descriptions file with the LLM before the run."""
    from ..descriptions.generation import (
        check_generated_format,
        classes_to_generate,
        generate_before_run,
    )
    from ..sdk.plan import resolve_classes

    if not get_method(args.method).uses_descriptions:
        _notice(f"method '{args.method}' uses no descriptions; nothing to generate")
        return
    check_generated_format(args.descriptions_format)  # before any output
    classes = resolve_classes(
        samples, kwargs.get("classes"), kwargs.get("classes_field")
    )
    todo = classes_to_generate(classes, args.descriptions)
    if todo:
        print(f"Generating descriptions for {len(todo)} of {len(classes)} classes")
    result = generate_before_run(
        classes,
        args.descriptions,
        descriptions_format=args.descriptions_format,
        **_llm_kwargs(args, "llm_"),
    )
    print(result.summary())


def _run_kwargs(args) -> dict:
    """``run_bifta`` keywords from the parsed arguments (the option groups
    of :mod:`bifta_plugin.sdk.options`, whose attribute names the options
    spell)."""
    from ..sdk.options import EncoderSpec, OutputSpec, RunOptions, TargetSpec

    kwargs = dict(
        method=args.method,
        encoder=EncoderSpec(
            model_name=args.model_name,
            pretrained=args.pretrained,
            device=args.device,
            precision=args.precision,
        ),
        runtime=RunOptions(
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            crop_mode=args.crop_mode,
            exif_transpose=args.exif_transpose,
            jpeg_draft=args.jpeg_draft,
            skip_existing=args.skip_existing,
            shard=args.shard,
            take_over=args.take_over,
        ),
        output=OutputSpec(
            label_field=args.label_field,
            gt_field=args.gt_field,
            eval_key=args.eval_key,
            run_key=args.run_key,
            embeddings_field=args.embeddings_field,
            clip_field=args.clip_field,
        ),
        target=TargetSpec(
            patches_field=args.patches_field,
            output_patches_field=args.output_patches_field,
            patch_padding=args.patch_padding,
            patch_min_size=args.patch_min_size,
            frame_step=args.frame_step,
            existing_frames=args.existing_frames,
        ),
        descriptions_format=args.descriptions_format,
        overwrite=args.overwrite,
        **_config_overrides(args),
    )
    if args.classes_field:
        kwargs["classes_field"] = args.classes_field
    elif args.classes_file:
        from ..descriptions.files import load_classes

        kwargs["classes"] = load_classes(args.classes_file)
    else:
        kwargs["classes"] = args.classes
    if get_method(args.method).uses_descriptions:
        if args.descriptions:
            kwargs["descriptions"] = args.descriptions
        elif args.generate_missing:
            raise CliError(
                "--generate-missing needs --descriptions: the .json file to "
                "write the generated descriptions to"
            )
        else:  # refused, as by run_bifta: never another method instead
            raise CliError(descriptions_needed_error(args.method))
    elif args.descriptions:
        _notice(
            f"method '{args.method}' does not use descriptions; ignoring --descriptions"
        )
    return kwargs


def _load_dataset(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        names = fo.list_datasets()
        raise CliError(
            f"no dataset named {name!r}; existing datasets: {names or 'none'}"
        )
    return fo.load_dataset(name)


def _check_new_dataset_name(name: str, overwrite: bool) -> None:
    import fiftyone as fo

    if fo.dataset_exists(name) and not overwrite:
        raise CliError(
            f"dataset {name!r} already exists; pass --overwrite-dataset to "
            "replace it, or use `classify --dataset` to classify it"
        )


def _dataset_from_folder(directory, labels_from_subdirs: bool):
    """The folder's images as a new non-persistent dataset (a temporary name)."""
    import fiftyone as fo

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory")
    if labels_from_subdirs:
        dataset_type = fo.types.ImageClassificationDirectoryTree
        kwargs = dict(label_field="ground_truth")
    else:
        dataset_type = fo.types.ImageDirectory
        kwargs = dict(recursive=True)
    dataset = fo.Dataset.from_dir(
        dataset_dir=str(directory),
        dataset_type=dataset_type,
        persistent=False,
        **kwargs,
    )
    if len(dataset) == 0:
        dataset.delete()
        raise CliError(f"no images found in {directory}")
    return dataset


def _publish_dataset(staged, name: str, overwrite: bool):
    """Give the checked dataset its name and keep it."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        if not overwrite:  # created meanwhile by someone else
            staged.delete()
            _check_new_dataset_name(name, overwrite)
        fo.delete_dataset(name)
    staged.name = name
    staged.persistent = True
    return staged


# ----------------------------------------------------------------------------
# runs / info / delete-run
# ----------------------------------------------------------------------------
def cmd_runs(args) -> int:
    from ..sdk import records as runs

    dataset = _load_dataset(args.dataset)
    keys = runs.list_bifta_runs(dataset)
    if not keys:
        print(f"dataset {dataset.name!r} has no BiFTA runs")
        return 0
    rows = [
        (
            "RUN KEY",
            "METHOD",
            "LABEL FIELD",
            "MODEL",
            "STATUS",
            "ACCURACY",
            "STARTED",
        )
    ]
    for key in keys:
        info = runs.get_bifta_run_info(dataset, key)
        accuracy = (info.get("results") or {}).get("accuracy")
        rows.append(
            (
                key,
                str(info.get("method")),
                str(info.get("label_field")),
                f"{info.get('model_name')} ({info.get('pretrained') or 'random'})",
                "stale" if info.get("stale") else str(info.get("status")),
                "-" if accuracy is None else f"{accuracy:.3f}",
                str(info.get("timestamp", ""))[:19],
            )
        )
    _print_table(rows)
    return 0


def cmd_requeue(args) -> int:
    """Queue again the shards of a sharded run that are neither completed
    nor live; they resume with skip_existing."""
    from ..sdk.shards import requeue_unfinished

    dataset = _load_dataset(args.dataset)
    requeued = requeue_unfinished(dataset, args.run_key)
    if not requeued:
        print(f"run {args.run_key!r}: no shard to requeue (all completed or running)")
        return 0
    print(
        f"run {args.run_key!r}: requeued shard(s) {requeued}; a `fiftyone delegated "
        "launch` worker runs them"
    )
    return 0


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        index, num_shards = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/K, e.g. 0/4; got {text!r}")
    return index, num_shards


def cmd_info(args) -> int:
    from ..sdk import records as runs

    dataset = _load_dataset(args.dataset)
    info = runs.get_bifta_run_info(dataset, args.run_key)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_delete_run(args) -> int:
    from ..sdk import records as runs

    dataset = _load_dataset(args.dataset)
    info = runs.get_bifta_run_info(dataset, args.run_key)
    eval_key = info.get("eval_key")
    had_eval = bool(eval_key) and dataset.has_evaluation(eval_key)
    deleted = runs.delete_bifta_run(
        dataset, args.run_key, delete_fields=not args.keep_fields
    )
    print(f"deleted run {args.run_key!r}; deleted fields: {deleted or 'none'}")
    if had_eval and not dataset.has_evaluation(eval_key):
        print(f"deleted evaluation {eval_key!r}")
    kept = [f for f in (info.get("fields") or {}).values() if dataset.get_field(f) is not None]
    if kept:
        print(
            f"kept fields {kept}: no run owns them now, so a new run that writes "
            f"them needs --overwrite (or choose another --label-field)"
        )
    return 0


def cmd_describe(args) -> int:
    from ..descriptions.generation import generate_descriptions

    if args.classes_file:
        from ..descriptions.files import load_classes

        classes = load_classes(args.classes_file)
    else:
        classes = args.classes
    result = generate_descriptions(classes, args.output, **_llm_kwargs(args))
    print(result.summary())
    return 0


# ----------------------------------------------------------------------------
# calibrate: pre-label thresholds on the labelled samples
# ----------------------------------------------------------------------------
def _add_calibrate_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="choose pre-label thresholds reaching a target precision on the "
        "samples that have ground truth; prints a per-class table",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True, help="the prediction field, e.g. bifta")
    p.add_argument("--gt-field", required=True, help="the ground-truth field")
    p.add_argument("--target", type=float, default=0.95, help="target precision (default 0.95)")
    p.add_argument("--score", choices=("confidence", "margin"), default="confidence")
    p.add_argument(
        "--rule", choices=("wilson", "point"), default="wilson",
        help="wilson: the Wilson lower bound reaches the target (default); "
        "point: the observed precision does (optimistic)",
    )  # fmt: skip
    p.add_argument("--min-accepted", type=int, default=10)
    p.add_argument("--save", metavar="KEY", help="save the calibration on the dataset under KEY")
    p.add_argument("--plot", metavar="HTML", help="write the precision-coverage curve (plotly)")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from ..sdk import calibration as bc

    dataset = _load_dataset(args.dataset)
    cal = bc.calibrate(
        dataset, args.pred_field, args.gt_field, target=args.target, score=args.score,
        rule=args.rule, min_accepted=args.min_accepted,
    )  # fmt: skip
    print(
        f"{cal.num_samples} labelled samples, target precision {cal.target:.1%}, "
        f"score {cal.score}, rule {cal.rule} ({int(cal.level * 100)}% Wilson intervals: "
        "over repeated labelled subsets they contain a threshold's true precision "
        "at that rate; the chosen threshold's estimate is slightly optimistic)"
    )
    print(cal.table())
    if args.save:
        bc.save_calibration(dataset, args.save, cal)
        print(f"saved as calibration {args.save!r}")
    if args.plot:
        cal.figure().write_html(args.plot, include_plotlyjs="cdn")
        print(f"curve: {args.plot}")
    return 0

