"""The pre-labelling operators through FiftyOne's real operator registry:
each form shows the plan the SDK computes, and executing does it."""

import json

import pytest

from test_calibration import calibration_dataset

pytestmark = pytest.mark.fiftyone

PREFIX = "@bifta/bifta/"


def _form(dataset, uri, params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    ctx = ExecutionContext(
        request_params={"dataset_name": dataset.name, "params": params, "view": dataset.view()._serialize()},
        executor=Executor(),
        operator_uri=PREFIX + uri,
    )
    prop = foo.get_operator(PREFIX + uri).resolve_input(ctx)
    json.dumps(prop.to_json())  # what the App receives must serialise
    return prop.type.properties


def _label(props, name):
    return props[name].view.label


def _execute(dataset, uri, params):
    import fiftyone.operators as foo

    result = foo.execute_operator(PREFIX + uri, ctx=dict(dataset=dataset.name, params=params))
    assert result.error is None, result.error
    return result.result


def test_calibrate_prelabel_accept_operators(fo_dataset):
    from bifta_plugin.sdk import accept as ba
    from bifta_plugin.sdk import calibration as bc
    from bifta_plugin.sdk import prelabel as bp

    ds = calibration_dataset(fo_dataset, n=300, unlabelled=60)
    props = _form(ds, "prelabel_samples", {})
    assert "No calibration yet" in _label(props, "no_calibration")

    params = dict(pred_field="pred", gt_field="gt", target=0.8, score="confidence", rule="wilson")
    props = _form(ds, "calibrate_prelabel", params)
    expected = bc.calibrate(ds, "pred", "gt", target=0.8)
    assert "Calibrated on 300 labelled samples" in _label(props, "plan")
    table = json.dumps(props["table"].to_json())
    assert "all (per-class)" in table and f"{expected.classes['a'].threshold:.4f}" in table
    out = _execute(ds, "calibrate_prelabel", dict(params, calibration_key="cal"))
    assert out["calibration_key"] == "cal"
    assert bc.load_calibration(ds, "cal").classes == expected.classes

    props = _form(ds, "prelabel_samples", {"calibration": "cal", "mode": "per_class"})
    plan = bp.plan_prelabel(ds, "cal")
    assert _label(props, "plan") == plan.message()
    out = _execute(ds, "prelabel_samples", {"calibration": "cal", "out_field": "prelabel"})
    assert "were auto-accepted" in out["summary"]
    assert len(ds.exists("prelabel")) == plan.num_accepted

    accept = dict(from_field="prelabel", to_field="gt", overwrite=False)
    props = _form(ds, "accept_labels", accept)
    dry = ba.accept_labels(ds, "prelabel", "gt", dry_run=True)
    assert _label(props, "plan") == dry.message() and "would be written" in dry.message()
    assert len(ds.exists("gt")) == 300  # the form wrote nothing
    out = _execute(ds, "accept_labels", accept)
    assert out["summary"].startswith(f"{plan.num_accepted} labels were written")
    assert len(ds.exists("gt")) == 300 + plan.num_accepted

    props = _form(ds, "send_to_review", {"pred_field": "pred", "review_tag": "needs_review", "top_k": 3})
    assert _label(props, "plan").startswith(f"{plan.num_review} samples tagged 'needs_review' will be sent")
