"""The plugin's operators, through FiftyOne's real registry and executor.

The tiny open_clip model (tests/tiny_model.py) is registered in this process,
which is where ``execute_operator`` runs the operator; random weights, so
only the plumbing is checked, never the predictions' quality.
"""

import json

import pytest

pytestmark = pytest.mark.fiftyone

URI = "@bifta/bifta/run_bifta"
INFO_URI = "@bifta/bifta/get_bifta_run_info"
DELETE_URI = "@bifta/bifta/delete_bifta_run"
CLASSES = ["cat", "astronaut", "coffee"]
FAST = dict(batch_size=2)
CROPS = dict(num_candidates=3, max_views=3)  # for the crop methods only


@pytest.fixture
def descriptions_file(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(
        json.dumps(
            {
                "cat": ["a small furry pet with whiskers.", "a cat sitting."],
                "astronaut": ["a person in a space suit.", "an astronaut."],
                "coffee": ["a cup of hot coffee.", "a mug of black coffee."],
            }
        )
    )
    return str(path)


@pytest.fixture
def dataset(fo_dataset, sample_images):
    return fo_dataset(
        sample_images[:3]
    )  # cat, astronaut, coffee + ground_truth


@pytest.fixture
def base_params(tiny_model_name):
    return dict(
        classes_source="list",
        classes=CLASSES,
        model_name=tiny_model_name,
        pretrained="none",
        device="cpu",
        **FAST,
    )


def _execute(dataset, params, **kwargs):
    import fiftyone.operators as foo

    return foo.execute_operator(
        URI, ctx=dict(dataset=dataset.name, params=params), **kwargs
    )


def _requests(result):
    return [r["operator_uri"] for r in result.executor.to_json()["requests"]]


def _form(dataset, params, uri=URI, view=None):
    """resolve_input as the App calls it: {name: Property}."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    ctx = ExecutionContext(
        request_params={
            "dataset_name": dataset.name,
            "params": params,
            "view": (view or dataset.view())._serialize(),
        },
        executor=Executor(),
        operator_uri=uri,
    )
    prop = foo.get_operator(uri).resolve_input(ctx)
    json.dumps(prop.to_json())  # what the App receives must serialise
    return prop.type.properties


# ----------------------------------------------------------------------------
# immediate execution
# ----------------------------------------------------------------------------
def test_immediate_run_writes_fields_and_streams_progress(
    dataset, base_params, descriptions_file
):
    from bifta_plugin.ui.run_execution import streamed_results

    params = dict(
        base_params,
        **CROPS,
        method="bifta",
        descriptions_path=descriptions_file,
        label_field="pred",
        gt_field="ground_truth",
        skip_failures=False,
    )
    result = _execute(dataset, params)
    requests = _requests(result)
    assert "set_progress" in requests
    assert requests[-2:] == ["reload_dataset", "show_output"]

    out = streamed_results(result)
    assert out["num_processed"] == 3 and out["num_failed"] == 0
    assert out["method"] == "bifta"
    assert 0.0 <= out["accuracy"] <= 1.0 and out["eval_key"] == "eval_pred"
    assert "Accuracy" in json.dumps(result.executor.to_json())
    # what BiFTA's description refinement did, per class, in the output
    kept = {k["label"]: k for k in out["descriptions_kept"]}
    assert set(kept) == set(CLASSES)
    assert all(1 <= k["kept"] <= k["candidates"] == 2 for k in kept.values())
    assert "Descriptions kept:" in json.dumps(result.executor.to_json())

    dataset.reload()
    schema = dataset.get_field_schema()
    for name in ("pred", "pred_crops", "pred_scores", "pred_error"):
        assert name in schema
    labels = dataset.values("pred.label")
    assert all(label in CLASSES for label in labels)
    assert all(len(d.detections) >= 1 for d in dataset.values("pred_crops"))
    assert dataset.has_evaluation("eval_pred")


def test_progress_is_streamed_between_batches_by_the_real_executor(dataset, base_params):
    """Immediate execution: the operator's generator yields set_progress
    messages, which the executor records in order (what the App receives)."""
    from bifta_plugin.ui.run_execution import streamed_results

    result = _execute(dataset, dict(base_params, method="clip", batch_size=1))
    progress = [
        r["params"]
        for r in result.executor.to_json()["requests"]
        if r["operator_uri"] == "set_progress"
    ]
    labels = [p["label"] for p in progress]
    assert labels[0].startswith("model ready on cpu; 3 of 3 samples to do")
    assert labels[1] == "1/3 samples"  # the first batch, always shown
    assert labels[-1] == "3/3 samples" and progress[-1]["progress"] == 1.0
    fractions = [p["progress"] for p in progress]
    assert fractions == sorted(fractions)
    assert streamed_results(result)["num_processed"] == 3


def test_closing_the_operator_generator_interrupts_the_run(dataset, base_params):
    """What the App server does when its client goes: the executor's
    generator is closed mid-run. The run stops between batches, is recorded
    as interrupted with its counts, and resumes with skip_existing."""
    import asyncio

    from fiftyone.operators.executor import execute_or_delegate_operator
    from bifta_plugin.sdk import records as runs
    from bifta_plugin.ui.run_execution import streamed_results

    params = dict(base_params, method="clip", batch_size=1)
    request = dict(dataset_name=dataset.name, view=dataset.view()._serialize(), params=params)
    execution = asyncio.run(execute_or_delegate_operator(URI, request))
    assert execution.is_generator
    labels = []
    for message in execution.result:
        labels.append(message.body.params.get("label"))
        if labels[-1] == "1/3 samples":
            break
    execution.result.close()

    dataset.reload()
    info = runs.get_bifta_run_info(dataset, "bifta")
    assert info["status"] == "interrupted"
    assert info["results"]["num_processed"] == 1
    assert dataset.count("bifta") == 1

    out = streamed_results(_execute(dataset, dict(params, skip_existing=True)))
    assert (out["num_processed"], out["num_skipped"]) == (2, 1)
    assert runs.get_bifta_run_info(dataset, "bifta")["status"] == "completed"


def test_missing_descriptions_are_refused(dataset, base_params):
    """No descriptions file: the form refuses a description method (as the
    SDK and the CLI do) and no other method runs instead."""
    from fiftyone.operators.executor import ExecutionError

    from bifta_plugin.ui.run_execution import build_run_request

    props = _form(dataset, dict(base_params, method="wca"))
    invalid, error = _invalid(props, "descriptions_path")
    assert invalid and "method 'wca' needs class descriptions" in error

    with pytest.raises(ExecutionError, match="method 'wca' needs class descriptions"):
        _execute(dataset, dict(base_params, method="wca"))
    with pytest.raises(ValueError, match="method 'wca' needs class descriptions"):
        build_run_request(dict(base_params, method="wca"))
    dataset.reload()
    assert "bifta" not in dataset.get_field_schema()

    # a method that needs no descriptions: valid without a file
    props = _form(dataset, dict(base_params, method="clip"))
    assert not props["descriptions_path"].invalid


def test_classes_from_file_and_from_field(dataset, base_params, tmp_path):
    from bifta_plugin.ui.run_execution import streamed_results

    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# my classes\ncat\n\nastronaut\ncoffee\n")
    params = dict(base_params, method="clip", label_field="from_file")
    params.pop("classes")
    params.update(classes_source="file", classes_path=str(classes_file))
    out = streamed_results(_execute(dataset, params))
    assert out["num_processed"] == 3

    params.update(
        classes_source="field",
        classes_field="ground_truth",
        label_field="from_gt",
    )
    out = streamed_results(_execute(dataset, params))
    assert out["num_processed"] == 3
    dataset.reload()
    assert set(dataset.values("from_gt.label")) <= set(CLASSES)


def test_target_view_selected_samples(dataset, base_params):
    import fiftyone.operators as foo

    first = dataset.first().id
    result = foo.execute_operator(
        URI,
        ctx=dict(
            dataset=dataset.name,
            selected=[first],
            params=dict(
                base_params, method="clip", view_target="SELECTED_SAMPLES"
            ),
        ),
    )
    assert result.error is None
    dataset.reload()
    assert dataset.exists("bifta").values("id") == [first]


# ----------------------------------------------------------------------------
# the form
# ----------------------------------------------------------------------------
def _invalid(props, name):
    prop = props[name]
    return prop.invalid, prop.error_message


def test_form_defaults_are_valid(dataset, base_params):
    props = _form(dataset, dict(base_params, method="clip"))
    for name in (
        "classes_source",
        "classes",
        "method",
        "descriptions_path",
        "model_name",
        "pretrained",
        "device",
        "batch_size",
        "label_field",
        "gt_field",
        "advanced",
    ):
        assert name in props, name
    assert not any(p.invalid for p in props.values())
    assert "random_weights" in props  # pretrained "none" is flagged
    # ground_truth is offered for evaluation, the label field is not
    assert "ground_truth" in props["gt_field"].type.values


@pytest.mark.parametrize(
    "update, name, message",
    [
        (
            dict(label_field="bad name"),
            "label_field",
            "not a valid field name",
        ),
        (
            dict(label_field="ground_truth"),
            "label_field",
            "not written by BiFTA",
        ),
        (dict(classes=[]), "classes", "at least one class"),
        (dict(device="gpu0"), "device", "not a device"),
        (
            dict(advanced=True, iou_threshold=1.5),
            "iou_threshold",
            "iou_threshold",
        ),
        (
            dict(advanced=True, num_candidates=0),
            "num_candidates",
            "num_candidates",
        ),
        (dict(advanced=True, run_key="not a key"), "run_key", "run key"),
        (
            dict(classes_source="file", classes_path="/no/such/file.txt"),
            "classes_path",
            "not found",
        ),
        (
            dict(descriptions_path="/no/such/descriptions.json"),
            "descriptions_path",
            "not found",
        ),
    ],
)
def test_form_marks_bad_inputs_invalid(
    dataset, base_params, update, name, message
):
    props = _form(dataset, dict(base_params, method="bifta", **update))
    invalid, error = _invalid(props, name)
    assert invalid, f"{name} should be invalid"
    assert message in error


def test_form_threshold_only_for_crop_methods(dataset, base_params):
    props = _form(dataset, dict(base_params, method="clip", advanced=True))
    assert "iou_threshold" not in props and "desc_sim_threshold" not in props
    props = _form(dataset, dict(base_params, method="bifta", advanced=True))
    assert "iou_threshold" in props and "desc_sim_threshold" in props


def test_classes_field_source_lists_classification_fields(
    dataset, base_params
):
    props = _form(dataset, dict(base_params, classes_source="field"))
    assert props["classes_field"].type.values == ["ground_truth"]
    props = _form(
        dataset,
        dict(
            base_params, classes_source="field", classes_field="ground_truth"
        ),
    )
    assert "3 classes" in props["classes_field_info"].view.label


def test_invalid_params_are_rejected_before_running(dataset, base_params):
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError, match="Validation error"):
        _execute(dataset, dict(base_params, method="clip", label_field="a.b"))
    dataset.reload()
    assert "a" not in dataset.get_field_schema()


def test_existing_bifta_field_warns_and_offers_overwrite(dataset, base_params):
    _execute(dataset, dict(base_params, method="clip"))
    props = _form(dataset, dict(base_params, method="clip"))
    assert "label_field_exists" in props
    assert "overwrite" in props and "skip_existing" in props
    assert not props["label_field"].invalid

    # another configuration needs overwrite=True (the SDK refuses otherwise)
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError, match="overwrite"):
        _execute(dataset, dict(base_params, method="ensemble"))
    _execute(dataset, dict(base_params, method="ensemble", overwrite=True))
    # resume: nothing left to do
    from bifta_plugin.ui.run_execution import streamed_results

    out = streamed_results(
        _execute(
            dataset, dict(base_params, method="ensemble", skip_existing=True)
        )
    )
    assert out["num_skipped"] == 3 and out["num_processed"] == 0


# ----------------------------------------------------------------------------
# delegated execution, __call__, companions
# ----------------------------------------------------------------------------
def test_delegated_request_queues_then_completes(dataset, base_params):
    from fiftyone.operators.delegated import DelegatedOperationService

    result = _execute(
        dataset,
        dict(
            base_params,
            method="clip",
            label_field="later",
            gt_field="ground_truth",
        ),
        request_delegation=True,
    )
    assert result.delegated is True
    op_id = result.result["id"]
    dataset.reload()
    assert "later" not in dataset.get_field_schema()

    dos = DelegatedOperationService()
    try:
        dos.execute_queued_operations(operator=URI, dataset_name=dataset.name)
        doc = dos.get(op_id)
        assert doc.run_state == "completed", doc.result
        out = doc.result.result
        assert out["num_processed"] == 3 and out["label_field"] == "later"
        assert out["accuracy"] is not None
        assert doc.status.progress == 1.0  # ctx.set_progress from the run
        assert doc.status.label == "3/3 samples"
    finally:
        dos.delete_operation(op_id)
    dataset.reload()
    assert len(dataset.exists("later")) == 3


def test_call_runs_from_python(dataset, tiny_model_name, descriptions_file):
    import fiftyone.operators as foo
    from bifta_plugin.sdk.options import EncoderSpec, OutputSpec, RunOptions

    op = foo.get_operator(URI)
    result = op(
        dataset.limit(2),
        classes=", ".join(CLASSES),
        descriptions_path=descriptions_file,
        method="descriptions",
        encoder=EncoderSpec(tiny_model_name, None, device="cpu"),
        runtime=RunOptions(batch_size=2),
        output=OutputSpec("called"),
    )
    assert result.result["num_samples"] == 2
    assert result.result["method"] == "descriptions"
    dataset.reload()
    assert len(dataset.exists("called")) == 2

    with pytest.raises(ValueError, match="only one of"):
        op(dataset, classes=CLASSES, classes_field="ground_truth")
    with pytest.raises(TypeError, match="unknown parameter"):
        op(dataset, classes=CLASSES, not_a_setting=3)


def test_run_info_and_delete_operators(dataset, base_params):
    import fiftyone.operators as foo

    _execute(
        dataset,
        dict(
            base_params,
            method="ensemble",
            label_field="gone",
        ),
    )
    props = _form(dataset, {}, uri=INFO_URI)
    assert props["run_key"].type.values == ["gone"]

    info = foo.execute_operator(
        INFO_URI, ctx=dict(dataset=dataset.name, params={"run_key": "gone"})
    ).result
    assert info["run_key"] == "gone"
    assert info["info"]["method"] == "ensemble"
    assert info["info"]["model_name"] == base_params["model_name"]

    props = _form(dataset, {"run_key": "gone"}, uri=DELETE_URI)
    assert "gone_scores" in props["delete_warning"].view.label
    out = foo.execute_operator(
        DELETE_URI, ctx=dict(dataset=dataset.name, params={"run_key": "gone"})
    ).result
    assert "gone" in out["deleted_fields"]
    dataset.reload()
    assert "gone" not in dataset.get_field_schema()
    assert not dataset.has_run("gone")

    props = _form(dataset, {}, uri=INFO_URI)
    assert props["run_key"].invalid


def test_build_run_request_maps_params_to_sdk_names():
    from bifta_plugin.ui.run_execution import build_run_request

    request = build_run_request(
        dict(
            classes_source="list",
            classes=["a", "b"],
            method="bifta",
            descriptions_path={"absolute_path": "/x/d.json"},
            pretrained="none",
            num_candidates=8,
            iou_threshold=0.5,
            label_field="p",
            eval_key="",
            advanced=True,
            view_target="DATASET",
        )
    )
    assert request.generate is None
    assert request.kwargs == dict(
        classes=["a", "b"],
        method="bifta",
        descriptions="/x/d.json",
        pretrained=None,
        num_candidates=8,
        iou_threshold=0.5,
        label_field="p",
    )


def test_outputs_render(dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    results = {
        URI: dict(
            method="bifta",
            label_field="p",
            num_samples=3,
            num_processed=2,
            num_failed=1,
            accuracy=0.5,
            eval_key="eval_p",
        ),
        INFO_URI: dict(run_key="p", info={"method": "bifta"}),
        DELETE_URI: dict(run_key="p", deleted_fields=["p", "p_error"]),
    }
    for uri, result in results.items():
        ctx = ExecutionContext(
            request_params={
                "dataset_name": dataset.name,
                "params": {},
                "results": result,
            },
            executor=Executor(),
            operator_uri=uri,
        )
        prop = foo.get_operator(uri).resolve_output(ctx)
        text = json.dumps(prop.to_json())
        if uri == URI:
            assert "Accuracy: 50.0%" in text and "p_error" in text


def test_run_operator_stores_embeddings_from_the_advanced_form(dataset, base_params):
    import numpy as np

    params = dict(base_params, method="clip", label_field="pred", advanced=True,
                  embeddings_field="pred_emb", skip_failures=False)
    props = _form(dataset, params)
    assert "embeddings_field" in props and not props["embeddings_field"].invalid
    bad = _form(dataset, dict(params, embeddings_field="bad name!"))
    assert bad["embeddings_field"].invalid
    _execute(dataset, params)
    dataset.reload()
    embeddings = np.stack(dataset.values("pred_emb"))
    assert embeddings.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_run_operator_classifies_objects(fo_dataset, sample_images, base_params):
    import fiftyone as fo

    ds = fo_dataset()
    ds.add_samples([
        fo.Sample(filepath=p, objects=fo.Detections(detections=[
            fo.Detection(label=label, bounding_box=[0.1, 0.1, 0.5, 0.5]),
            fo.Detection(label=label, bounding_box=[0.5, 0.5, 0.5, 0.5]),
        ]))
        for p, label in sample_images[:2]
    ])
    params = dict(base_params, method="clip", label_field="pred", advanced=True,
                  patches_field="objects", output_patches_field="objects_pred",
                  patch_padding=0.1, skip_failures=False)
    props = _form(ds, params)
    assert not props["patches_field"].invalid
    assert _form(ds, dict(params, patches_field="filepath"))["patches_field"].invalid
    _execute(ds, params)
    ds.reload()
    labels = ds.values("objects_pred.detections.pred.label", unwind=True)
    assert len(labels) == 4 and set(labels) <= set(CLASSES)
