"""Pre-labelling operators: calibrate, pre-label, send to review, load the
review, accept into ground truth. Thin shells over :mod:`bifta_plugin.sdk`
(calibration, prelabel, review, accept): every form shows what executing it
will do (computed by the same SDK functions, without writing) before
Execute, and its param names are the SDK's keyword names.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..sdk import rules
from . import _common as ui

ICON = ui.ICON
SCORES = {"confidence": "Confidence (top-1 probability)", "margin": "Margin (top-1 minus top-2)"}
RULES = {
    "wilson": "Wilson lower bound reaches the target (conservative)",
    "point": "Observed precision reaches the target (optimistic)",
}
MODES = {"per_class": "One threshold per class", "global": "One threshold for all classes"}
BACKENDS = {"labelstudio": "Label Studio", "cvat": "CVAT"}


def _config(name, label, description):
    return foo.OperatorConfig(
        name=name, label=label, description=description, icon=ICON, dynamic=True
    )


def _pred_field_input(ctx, inputs, name="pred_field", label="Prediction field"):
    fields = rules.classification_fields(ctx.dataset)
    prop = ui.field_dropdown(
        inputs, name, fields, label=label, required=True,
        description="A fo.Classification field with confidences (a BiFTA run's label field)",
    )  # fmt: skip
    return prop, fields


def _pct_ci(r) -> str:
    if r.precision is None:
        return "no sample accepted"
    lo, hi = r.precision_ci
    return f"{r.precision:.1%} precision [{lo:.1%}, {hi:.1%}] at {r.coverage:.1%} coverage"


# ============================================================================
# calibrate
# ============================================================================
class CalibratePrelabel(foo.Operator):
    """Choose pre-label thresholds on the samples that have ground truth."""

    @property
    def config(self):
        return _config(
            "calibrate_prelabel",
            "BiFTA: calibrate pre-label thresholds",
            "Thresholds reaching a target precision on labelled samples",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        prop, fields = _pred_field_input(ctx, inputs)
        if prop is None:
            ui.error(inputs, "no_fields", "The dataset has no fo.Classification field")
            return types.Property(inputs)
        ui.field_dropdown(
            inputs, "gt_field", fields, label="Ground-truth field", required=True,
            description="Labels of the calibration subset (samples without it are ignored)",
        )  # fmt: skip
        inputs.float("target", label="Target precision", default=0.95, min=0.5, max=1.0)
        ui.radio(inputs, "score", SCORES, label="Score", default="confidence")
        ui.radio(inputs, "rule", RULES, label="Threshold rule", default="wilson")
        inputs.int("min_accepted", label="Minimum accepted samples per threshold", default=10, min=1)
        pred = ctx.params.get("pred_field")
        inputs.str(
            "calibration_key", label="Save as", default=f"{pred or 'bifta'}_calibration",
            description="The calibration's key on the dataset (pre-label runs load it)",
        )  # fmt: skip
        cal = _try_calibrate(ctx, inputs)
        if cal is not None:
            ui.notice(inputs, "plan", _calibration_sentence(cal))
            inputs.md(cal.markdown_table(), name="table")
        return types.Property(inputs, view=types.View(label="Calibrate pre-label thresholds"))

    def execute(self, ctx):
        from ..sdk import calibration as bc

        cal = bc.calibrate(ctx.dataset, **_calibrate_kwargs(ctx.params))
        key = ctx.params.get("calibration_key") or f"{cal.pred_field}_calibration"
        bc.save_calibration(ctx.dataset, key, cal)
        return {"calibration_key": key, "summary": _calibration_sentence(cal)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("calibration_key", label="Saved as")
        outputs.str("summary", label="Result")
        return types.Property(outputs)


def _calibrate_kwargs(params) -> dict:
    return dict(
        pred_field=params.get("pred_field"),
        gt_field=params.get("gt_field"),
        target=float(params.get("target") or 0.95),
        score=params.get("score") or "confidence",
        rule=params.get("rule") or "wilson",
        min_accepted=int(params.get("min_accepted") or 10),
    )


def _try_calibrate(ctx, inputs):
    from ..sdk import calibration as bc

    if not ctx.params.get("pred_field") or not ctx.params.get("gt_field"):
        return None
    try:
        return bc.calibrate(ctx.dataset, **_calibrate_kwargs(ctx.params))
    except ValueError as e:
        ui.error(inputs, "calibration_error", str(e))
        return None


def _calibration_sentence(cal) -> str:
    reached = sum(r.reached for r in cal.classes.values())
    one = cal.overall
    head = (
        f"Calibrated on {cal.num_samples:,} labelled samples ({cal.score}, target "
        f"{cal.target:.0%}, {cal.rule} rule). "
    )
    if one.reached:
        head += f"One threshold: {cal.score} >= {one.threshold:.3f} gives {_pct_ci(one)}. "
    else:
        head += "No single threshold reaches the target. "
    return head + (
        f"Per class: {reached} of {len(cal.classes)} classes reach it; together "
        f"{_pct_ci(cal.per_class_overall)}."
    )


# ============================================================================
# pre-label
# ============================================================================
class PrelabelSamples(foo.Operator):
    """Write confident predictions as pre-labels, tag the rest for review."""

    @property
    def config(self):
        return _config(
            "prelabel_samples",
            "BiFTA: pre-label with calibrated thresholds",
            "Auto-accept confident predictions; tag the rest for review",
        )

    def resolve_input(self, ctx):
        from ..sdk import calibration as bc
        from ..sdk import prelabel as bp

        inputs = types.Object()
        keys = bc.list_calibrations(ctx.dataset)
        if not keys:
            ui.error(inputs, "no_calibration", "No calibration yet: run 'BiFTA: calibrate pre-label thresholds' first")
            return types.Property(inputs)
        choices = types.Dropdown(label="Calibration")
        for k in keys:
            choices.add_choice(k, label=k)
        inputs.enum(
            "calibration", choices.values(), label="Calibration", default=keys[-1],
            view=choices,
            description="Thresholds saved by the calibrate operator (default: the newest)",
        )  # fmt: skip
        ui.radio(inputs, "mode", MODES, label="Thresholds", default="per_class")
        inputs.str("out_field", label="Pre-label field", default="prelabel")
        inputs.str("review_tag", label="Review tag", default="needs_review")
        inputs.bool(
            "exclude_labelled", label="Skip samples that already have ground truth", default=True
        )
        key = ctx.params.get("calibration") or keys[-1]
        if key in keys:
            plan = bp.plan_prelabel(
                ctx.target_view(), key, mode=ctx.params.get("mode") or "per_class",
                exclude_labelled=ctx.params.get("exclude_labelled", True) is not False,
            )  # fmt: skip
            ui.notice(inputs, "plan", plan.message())
        return types.Property(inputs, view=types.View(label="Pre-label"))

    def execute(self, ctx):
        from ..sdk import prelabel as bp

        from ..sdk import calibration as bc

        p = ctx.params
        key = p.get("calibration") or bc.list_calibrations(ctx.dataset)[-1]
        plan = bp.prelabel(
            ctx.target_view(), key, out_field=p.get("out_field") or "prelabel",
            review_tag=p.get("review_tag") or "needs_review", mode=p.get("mode") or "per_class",
            exclude_labelled=p.get("exclude_labelled", True) is not False,
        )  # fmt: skip
        ctx.trigger("reload_dataset")
        return {"summary": plan.message().replace("will be", "were").replace("go to", "went to")}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Result")
        return types.Property(outputs)


# ============================================================================
# send to review / load the review
# ============================================================================
class SendToReview(foo.Operator):
    """Send the review queue to an annotation tool with scored pre-annotations."""

    @property
    def config(self):
        return _config(
            "send_to_review",
            "BiFTA: send the review queue to annotation",
            "Label Studio (top-k pre-annotations with scores) or CVAT",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        prop, _ = _pred_field_input(ctx, inputs)
        if prop is None:
            ui.error(inputs, "no_fields", "The dataset has no fo.Classification field")
            return types.Property(inputs)
        inputs.str("review_tag", label="Queue: samples tagged", default="needs_review")
        inputs.str("anno_key", label="Annotation run key", default="review", required=True)
        inputs.str("review_field", label="Review field", default="review")
        inputs.int("top_k", label="Pre-annotations per task", default=3, min=1)
        ui.radio(inputs, "backend", BACKENDS, label="Annotation tool", default="labelstudio")
        inputs.str(
            "url", label="Server URL",
            description="Empty: FiftyOne's annotation config (e.g. FIFTYONE_LABELSTUDIO_URL); "
            "the API key always comes from it (FIFTYONE_LABELSTUDIO_API_KEY)",
        )  # fmt: skip
        p = ctx.params
        if p.get("pred_field"):
            n = len(ctx.dataset.match_tags(p.get("review_tag") or "needs_review").exists(p["pred_field"]))
            tool = BACKENDS.get(p.get("backend") or "labelstudio")
            ui.notice(
                inputs, "plan",
                f"{n:,} samples tagged {p.get('review_tag') or 'needs_review'!r} will be sent to "
                f"{tool} as {p.get('anno_key') or 'review'!r}, pre-annotated with "
                f"their top-{p.get('top_k') or 3} classes"
                + (" and scores" if tool == "Label Studio" else ""),
            )  # fmt: skip
        return types.Property(inputs, view=types.View(label="Send to review"))

    def execute(self, ctx):
        from ..sdk import review as br

        p = ctx.params
        queue = ctx.dataset.match_tags(p.get("review_tag") or "needs_review")
        sent = br.send_for_review(
            queue, p["anno_key"], pred_field=p["pred_field"],
            classes=_run_classes(ctx.dataset, p["pred_field"]),
            review_field=p.get("review_field") or "review", top_k=int(p.get("top_k") or 3),
            backend=p.get("backend") or "labelstudio", url=p.get("url") or None,
        )  # fmt: skip
        return {"summary": sent.message()}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Result")
        return types.Property(outputs)


class LoadReview(foo.Operator):
    """Load reviewed labels back and report agreement with the pre-labels."""

    @property
    def config(self):
        return _config(
            "load_review",
            "BiFTA: load the review",
            "Load annotations back; agreement of pre-labels with reviewers",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        keys = ctx.dataset.list_annotation_runs()
        if not ui.field_dropdown(inputs, "anno_key", keys, label="Annotation run", required=True,
                                 description="A run started by 'send the review queue'"):  # fmt: skip
            ui.error(inputs, "no_runs", "No annotation run on this dataset")
            return types.Property(inputs)
        _pred_field_input(ctx, inputs, label="Zero-shot field the pre-labels came from")
        inputs.str("url", label="Server URL", description="Empty: the run's URL")
        return types.Property(inputs, view=types.View(label="Load the review"))

    def execute(self, ctx):
        from ..sdk import review as br

        p = ctx.params
        reviewed = br.load_review(ctx.dataset, p["anno_key"], url=p.get("url") or None)
        info = ctx.dataset.get_annotation_info(p["anno_key"]).config
        review_field = next(iter(info.label_schema))
        agreement = br.review_agreement(ctx.dataset, p["pred_field"], review_field)
        ctx.trigger("reload_dataset")
        o = agreement["overall"]
        rate = "-" if o["rate"] is None else f"{o['rate']:.1%}"
        rows = [f"{c}: {r['agreed']}/{r['n']}" for c, r in agreement["classes"].items()]
        return {
            "summary": f"{len(reviewed):,} samples reviewed; reviewers kept the pre-label "
            f"{o['agreed']:,} of {o['n']:,} times ({rate}). Per class: " + ", ".join(rows)
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Result")
        return types.Property(outputs)


def _run_classes(dataset, pred_field: str) -> list:
    """The classes of the BiFTA run that wrote ``pred_field`` (logits order)."""
    from ..sdk import records

    keys = records.bifta_runs_for_field(dataset, pred_field)
    if keys:
        return list(records.get_bifta_run_info(dataset, keys[-1])["classes"])
    return rules.distinct_labels(dataset, pred_field)


# ============================================================================
# accept into ground truth
# ============================================================================
class AcceptLabels(foo.Operator):
    """Promote pre-labels or reviewed labels into the ground-truth field."""

    @property
    def config(self):
        return _config(
            "accept_labels",
            "BiFTA: accept labels into ground truth",
            "Copy accepted pre-labels or reviewed labels into the ground-truth field",
        )

    def resolve_input(self, ctx):
        from ..sdk import accept as ba

        inputs = types.Object()
        prop, _ = _pred_field_input(ctx, inputs, name="from_field", label="Accept labels from")
        if prop is None:
            ui.error(inputs, "no_fields", "The dataset has no fo.Classification field")
            return types.Property(inputs)
        inputs.str("to_field", label="Ground-truth field", default="ground_truth", required=True)
        inputs.float("min_confidence", label="Minimum confidence (optional)", min=0.0, max=1.0)
        inputs.bool("overwrite", label="Overwrite existing ground truth", default=False)
        inputs.bool("only_reviewed", label="Only samples a reviewer annotated", default=False)
        p = ctx.params
        if p.get("from_field") and p.get("to_field"):
            try:
                dry = ba.accept_labels(_accept_scope(ctx), **_accept_kwargs(p), dry_run=True)
                ui.notice(inputs, "plan", dry.message())
            except ValueError as e:
                ui.error(inputs, "accept_error", str(e))
        return types.Property(inputs, view=types.View(label="Accept into ground truth"))

    def execute(self, ctx):
        from ..sdk import accept as ba

        result = ba.accept_labels(_accept_scope(ctx), **_accept_kwargs(ctx.params))
        ctx.trigger("reload_dataset")
        return {"summary": result.message()}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Result")
        return types.Property(outputs)


def _accept_kwargs(p) -> dict:
    mc = p.get("min_confidence")
    return dict(
        from_field=p["from_field"],
        to_field=p["to_field"],
        min_confidence=None if mc in (None, "") else float(mc),
        overwrite=bool(p.get("overwrite")),
    )


def _accept_scope(ctx):
    from ..sdk.review import REVIEWED_SUFFIX

    view = ctx.target_view()
    flag = ctx.params["from_field"] + REVIEWED_SUFFIX
    if ctx.params.get("only_reviewed") and view.get_field(flag) is not None:
        view = view.match({flag: True})
    return view
