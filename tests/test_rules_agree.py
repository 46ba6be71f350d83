"""The SDK, the CLI and the App's form apply the same rules to the same input.

Each case feeds one input to the three front doors — ``run_bifta`` (the
SDK), ``bifta_plugin.cli.commands.main`` (the real CLI, in process) and the
``run_bifta`` operator's ``resolve_input`` through FiftyOne's real
``ExecutionContext`` (plus its execution where it runs) — and checks that
they accept or refuse it alike, with the same message, and resolve it to the
same values: a YAML class list, a field name with a hyphen, the classes of a
field when the run targets a few samples, a description method without
descriptions, and an option the method does not read.
"""

import json

import pytest

from tiny_model import TINY_CONFIG_PATH, TINY_MODEL_NAME
from test_operators import _execute, _form, _invalid

from bifta_plugin.cli.errors import cli_wording
from bifta_plugin.core.config import get_config
from bifta_plugin.core.methods import descriptions_needed_error
from bifta_plugin.descriptions.files import load_classes

pytestmark = pytest.mark.fiftyone

CLASSES = ["cat", "astronaut", "coffee"]
DESCRIPTIONS = {c: [f"a photo of a {c}.", f"a {c} in a picture."] for c in CLASSES}
TINY = ["--model", TINY_MODEL_NAME, "--model-config", str(TINY_CONFIG_PATH)]
CLI_RUNTIME = ["--pretrained", "none", "--device", "cpu", "--batch-size", "4"]


@pytest.fixture
def dataset(fo_dataset, sample_images):
    return fo_dataset(sample_images[:3])  # cat, astronaut, coffee + ground_truth


@pytest.fixture(scope="module")
def encoder(tiny_model_name):
    from bifta_plugin.engine.encoders import create_encoder

    return create_encoder(tiny_model_name, None, device="cpu", cache_dir=False)


@pytest.fixture
def form_params(tiny_model_name):
    return dict(
        classes_source="list",
        classes=CLASSES,
        model_name=tiny_model_name,
        pretrained="none",
        device="cpu",
        batch_size=2,
    )


@pytest.fixture
def descriptions_file(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(DESCRIPTIONS))
    return str(path)


def _cli(argv, capsys):
    from bifta_plugin.cli.commands import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _sdk(samples, encoder, **kwargs):
    """run_bifta with flat settings grouped into its option groups."""
    from bifta_plugin.sdk.options import split_options
    from bifta_plugin.sdk.run import run_bifta

    args = dict(classes=CLASSES, method="clip", instance=encoder, num_workers=0, batch_size=2)
    args.update(kwargs)
    return run_bifta(samples, **split_options(args))


def _run_info(dataset, run_key):
    from bifta_plugin.sdk import records

    dataset.reload()
    return records.get_bifta_run_info(dataset, run_key)


def _nothing_written(dataset, name):
    dataset.reload()
    return name not in dataset.get_field_schema() and not dataset.has_run(name)


# ----------------------------------------------------------------------------
# class-list files: one reader
# ----------------------------------------------------------------------------
def test_yaml_class_list_reads_the_same_everywhere(dataset, form_params, tmp_path, capsys):
    from bifta_plugin.ui.run_execution import build_run_request

    path = tmp_path / "classes.yaml"
    path.write_text("- cat\n- astronaut\n- coffee\n")
    expected = load_classes(path)
    assert expected == CLASSES  # not "- cat": YAML is parsed, not read as lines

    code, _, err = _cli(
        ["classify", "--dataset", dataset.name, "--classes-file", path, "--method", "clip",
         "--label-field", "cli", *TINY, *CLI_RUNTIME],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert _run_info(dataset, "cli")["classes"] == expected

    params = dict(form_params, method="clip", classes_source="file", classes_path=str(path))
    params.pop("classes")
    props = _form(dataset, params)
    assert not props["classes_path"].invalid
    assert "3 classes: cat, astronaut, coffee" in props["classes_path_info"].view.label
    assert build_run_request(params).kwargs["classes"] == expected
    assert _execute(dataset, dict(params, label_field="form")).error is None
    assert _run_info(dataset, "form")["classes"] == expected


def test_bad_class_list_file_is_refused_alike(dataset, form_params, tmp_path, capsys):
    path = tmp_path / "classes.yaml"
    path.write_text("cat: 1\n")  # a mapping, not a list
    with pytest.raises(ValueError, match="must be a list of names") as info:
        load_classes(path)

    code, _, err = _cli(
        ["classify", "--dataset", dataset.name, "--classes-file", path, "--method", "clip",
         *TINY, *CLI_RUNTIME],
        capsys,
    )  # fmt: skip
    assert code == 2 and cli_wording(str(info.value)) in err

    params = dict(form_params, method="clip", classes_source="file", classes_path=str(path))
    invalid, error = _invalid(_form(dataset, params), "classes_path")
    assert invalid and error == str(info.value)


# ----------------------------------------------------------------------------
# field names: one rule
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bifta-v2", "bifta v2", "2nd"])
def test_unsafe_field_name_is_refused_alike(dataset, form_params, encoder, capsys, name):
    expected = f"invalid label_field {name!r}: not a valid field name"

    with pytest.raises(ValueError, match=expected):
        _sdk(dataset, encoder, label_field=name, run_key="v2")
    code, _, err = _cli(
        ["classify", "--dataset", dataset.name, "--classes", *CLASSES, "--method", "clip",
         "--label-field", name, "--run-key", "v2", *TINY, *CLI_RUNTIME],
        capsys,
    )  # fmt: skip
    # the same message, its keyword spelled as the CLI's flag
    assert code == 2 and cli_wording(expected) in err
    invalid, error = _invalid(_form(dataset, dict(form_params, method="clip", label_field=name)), "label_field")
    assert invalid and expected in error
    assert _nothing_written(dataset, name) and not dataset.has_run("v2")


def test_safe_field_name_is_accepted_alike(dataset, form_params, encoder, capsys):
    _sdk(dataset, encoder, label_field="bifta_v2")
    code, _, err = _cli(
        ["classify", "--dataset", dataset.name, "--classes", *CLASSES, "--method", "clip",
         "--label-field", "cli_v2", *TINY, *CLI_RUNTIME],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    props = _form(dataset, dict(form_params, method="clip", label_field="form_v2"))
    assert not props["label_field"].invalid
    dataset.reload()
    assert {"bifta_v2", "cli_v2"} <= set(dataset.get_field_schema())


# ----------------------------------------------------------------------------
# classes from a field: the whole dataset's labels
# ----------------------------------------------------------------------------
def test_classes_field_means_the_whole_dataset_everywhere(dataset, form_params, encoder, capsys):
    import fiftyone.operators as foo

    first = dataset.first()
    one = dataset.select(first.id)
    assert one.distinct("ground_truth.label") == ["cat"]  # the view has one class
    expected = sorted(CLASSES)

    _sdk(one, encoder, classes=None, classes_field="ground_truth", label_field="sdk")
    assert _run_info(dataset, "sdk")["classes"] == expected

    code, _, err = _cli(
        ["classify", "--dataset", dataset.name, "--classes-field", "ground_truth",
         "--method", "clip", "--label-field", "cli", *TINY, *CLI_RUNTIME],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert _run_info(dataset, "cli")["classes"] == expected

    params = dict(form_params, method="clip", classes_source="field", classes_field="ground_truth")
    params.pop("classes")
    props = _form(dataset, params, view=one)
    assert f"3 classes: {', '.join(expected)}" in props["classes_field_info"].view.label
    result = foo.execute_operator(
        "@bifta/bifta/run_bifta",
        ctx=dict(
            dataset=dataset.name,
            selected=[first.id],
            params=dict(params, label_field="form", view_target="SELECTED_SAMPLES"),
        ),
    )
    assert result.error is None, result.error
    assert _run_info(dataset, "form")["classes"] == expected
    dataset.reload()
    assert dataset.exists("form").values("id") == [first.id]  # only the target was classified


def test_classification_fields_are_what_the_sdk_accepts(dataset, form_params, encoder):
    import fiftyone as fo

    from bifta_plugin.sdk.rules import classification_fields

    dataset.add_sample_field(
        "many", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classifications
    )
    listed = classification_fields(dataset)
    assert listed == ["ground_truth"]
    props = _form(dataset, dict(form_params, method="clip", classes_source="field"))
    assert props["classes_field"].type.values == listed
    assert _form(dataset, dict(form_params, method="clip"))["gt_field"].type.values == listed
    with pytest.raises(ValueError, match="must be a Classification field"):
        _sdk(dataset, encoder, gt_field="many", label_field="p")


# ----------------------------------------------------------------------------
# a description method without descriptions: refused, never replaced
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["wca", "bifta", "descriptions"])
def test_description_method_without_descriptions_is_refused_alike(
    dataset, form_params, encoder, capsys, method
):
    from fiftyone.operators.executor import ExecutionError

    from bifta_plugin.ui.run_execution import build_run_request

    expected = descriptions_needed_error(method)

    with pytest.raises(ValueError) as info:
        _sdk(dataset, encoder, method=method, descriptions=None, label_field="p")
    assert str(info.value) == expected
    code, _, err = _cli(
        ["classify", "--dataset", dataset.name, "--classes", *CLASSES, "--method", method,
         "--label-field", "p", *TINY, *CLI_RUNTIME],
        capsys,
    )  # fmt: skip
    assert code == 2 and cli_wording(expected) in err
    params = dict(form_params, method=method, label_field="p")
    invalid, error = _invalid(_form(dataset, params), "descriptions_path")
    assert invalid and error == expected
    with pytest.raises(ValueError, match="needs class descriptions"):
        build_run_request(params)
    with pytest.raises(ExecutionError, match="needs class descriptions"):
        _execute(dataset, params)
    assert _nothing_written(dataset, "p")


# ----------------------------------------------------------------------------
# an option the method does not read: refused with the same message
# ----------------------------------------------------------------------------
OFF_METHOD = [
    ("wca", "desc_sim_threshold", 0.5, "--desc-sim-threshold",
     "wca does not refine descriptions; desc_sim_threshold is a bifta option"),
    ("wca", "iou_threshold", 0.5, "--iou-threshold",
     "wca does not filter its crops by IoU; iou_threshold is a bifta option"),
    ("clip", "num_candidates", 8, "--num-candidates",
     "clip does not use crops; num_candidates is a bifta/wca option"),
    ("descriptions", "max_descriptions", 3, "--max-descriptions",
     "descriptions does not refine descriptions; max_descriptions is a bifta option"),
]  # fmt: skip


@pytest.mark.parametrize("method, option, value, flag, expected", OFF_METHOD)
def test_off_method_option_is_refused_alike(
    dataset, form_params, encoder, descriptions_file, capsys, method, option, value, flag, expected
):
    with pytest.raises(ValueError) as info:
        get_config(method, **{option: value})
    assert str(info.value) == expected

    with pytest.raises(ValueError, match=expected):
        _sdk(dataset, encoder, method=method, descriptions=DESCRIPTIONS, label_field="p",
             **{option: value})  # fmt: skip
    code, _, err = _cli(
        ["classify", "--dataset", dataset.name, "--classes", *CLASSES, "--method", method,
         "--descriptions", descriptions_file, "--label-field", "p", flag, value,
         *TINY, *CLI_RUNTIME],
        capsys,
    )  # fmt: skip
    assert code == 2 and cli_wording(expected) in err

    params = dict(form_params, method=method, descriptions_path=descriptions_file, label_field="p")
    # the advanced section open: the option is shown, marked invalid
    invalid, error = _invalid(_form(dataset, dict(params, advanced=True, **{option: value})), option)
    assert invalid and error == expected
    # the section closed with the value left in it (the App keeps it): still refused
    invalid, error = _invalid(_form(dataset, dict(params, advanced=False, **{option: value})), "advanced")
    assert invalid and error == expected
    assert _nothing_written(dataset, "p")


def test_option_the_method_reads_is_shown_and_accepted(dataset, form_params, descriptions_file):
    params = dict(form_params, method="bifta", descriptions_path=descriptions_file, advanced=True)
    props = _form(dataset, dict(params, desc_sim_threshold=0.5))
    assert not props["desc_sim_threshold"].invalid
    # wca without a value: the bifta-only options are not offered at all
    props = _form(dataset, dict(params, method="wca"))
    assert "desc_sim_threshold" not in props and "iou_threshold" not in props
    assert "num_candidates" in props
