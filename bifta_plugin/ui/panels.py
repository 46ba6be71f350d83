"""Panels of the ``@bifta/bifta`` plugin: browse (mis)predictions.

- ``bifta_mispredictions`` (grid): accuracy and counts, a confusion-matrix
  heatmap (click a cell: its samples), the most confused pairs (row action:
  their samples), per-class accuracy (click a bar: that class's mistakes),
  buttons for all / confident mistakes, uncertain predictions and reset, and
  tagging of the current view for review. Without ground truth: a confidence
  histogram (click a bin: its samples) and the low-confidence / uncertain
  buttons.
- ``bifta_explanation`` (modal): for the current sample, predicted class vs
  runner-up, the best-matching description and the top crops, which it shows
  on the image (active fields ``L`` and ``L_crops``).

The panels only render and route events: every metric and view comes from
:mod:`bifta_plugin.sdk.analysis`; the run records are read once per
panel load (a :class:`~bifta_plugin.sdk.records.RunRecords` snapshot) and the
resolved fields kept in the panel state.

Views and recomputation: metrics are computed over a *base* view, the App's
view when the panel loaded or when the user last changed it. A view that the
panel sets itself (a click) changes the App's view and so fires
``on_change_view``; the panel recognises its own view and keeps the base, so
the matrix stays whole and other cells remain clickable.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types
import fiftyone.server.view as fosv

from ..sdk import analysis
from ..sdk.records import RunRecords

logger = logging.getLogger(__name__)

ICON = "/assets/icon.svg"
NO_GT = "__none__"
DEFAULT_TOP_N = 20
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_MAX_MARGIN = 0.1
DEFAULT_MAX_CONFIDENCE = 0.5
HISTOGRAM_BINS = 20
#: confusion matrices up to this size print their counts in the cells
MAX_ANNOTATED_CLASSES = 20

#: plot colour (the App's accent orange); empty heatmap cells are dark grey
ACCENT = "#ff6d04"
#: static plots: clicks only (no zoom by wheel or drag, no mode bar)
PLOT_CONFIG = {"displayModeBar": False, "scrollZoom": False}

# Panel-state paths of the inputs: the App stores an input's value at its
# property path, e.g. ``fields.pred_field`` for the dropdown in ``fields``.
PRED = "fields.pred_field"
GT = "fields.gt_field"
SEARCH = "filters.search"
TOP_N = "filters.top_n"
MIN_CONFIDENCE = "actions.min_confidence"
MAX_MARGIN = "actions.max_margin"
MAX_CONFIDENCE = "actions.max_confidence"
REVIEW_TAG = "tagging.review_tag"


def _view_key(stages, filters=None) -> str:
    """Canonical form of an App view: serialized stages (per-stage uuids
    dropped) plus sidebar filters."""
    cleaned = [
        {k: v for k, v in dict(s).items() if k != "_uuid"}
        for s in (stages or [])
    ]
    return json.dumps([cleaned, filters or {}], sort_keys=True, default=str)


def _app_view_key(ctx) -> str:
    params = ctx.request_params
    return _view_key(params.get("view"), params.get("filters"))


def _fmt_pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


class MispredictionsPanel(foo.Panel):
    """Confusion matrix, confused pairs and per-class accuracy of a
    prediction field, each clickable into the samples behind it."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="bifta_mispredictions",
            label="BiFTA mispredictions",
            icon=ICON,
            surfaces="grid",
            help_markdown=(
                "Browse the mistakes of a Classification field: click a "
                "confusion-matrix cell, a confused pair or a class bar to "
                "load its samples; tag the current view for review."
            ),
        )

    # --- state helpers ------------------------------------------------------
    def _fields(self, ctx):
        """(pred_field, gt_field or None), validated against the schema.

        The fields live in the panel state; only a missing or stale one is
        resolved again, from one run-records snapshot (so a panel load reads
        the records once and other events not at all).
        """
        state, dataset = ctx.panel.state, ctx.dataset
        fields = analysis.classification_fields(dataset)
        pred, gt = state.get(PRED), state.get(GT)
        records = None
        if pred not in fields:
            records = RunRecords.load(dataset)
            pred = analysis.default_prediction_field(dataset, records)
        if gt != NO_GT and (gt not in fields or gt == pred):
            if records is None:
                records = RunRecords.load(dataset)
            gt = analysis.default_gt_field(dataset, pred, records) or NO_GT
        if (pred, gt) != (state.get(PRED), state.get(GT)):
            state.set({PRED: pred, GT: gt})
        return pred, (None if gt == NO_GT else gt)

    def _base(self, ctx):
        """The collection the metrics (and the panel's views) are built on."""
        stages = ctx.panel.state.base_view
        if stages is None:
            return ctx.view
        return fosv.get_view(ctx.dataset, stages=stages, reload=False)

    def _set_view(self, ctx, view, description):
        """Loads ``view`` in the App, remembering it as the panel's own."""
        key = _view_key(view._serialize(), ctx.request_params.get("filters"))
        ctx.panel.state.set({"panel_view": key, "showing": description})
        ctx.ops.set_view(view)

    # --- computation --------------------------------------------------------
    def _refresh(self, ctx):
        pred, gt = self._fields(ctx)
        state = ctx.panel.state
        if pred is None:
            state.set({"mode": "empty", "metrics": None, "pairs": []})
            return
        base = self._base(ctx)
        if gt is not None and base.exists(f"{gt}.label").limit(1).count():
            self._refresh_with_gt(ctx, base, pred, gt)
        else:
            self._refresh_without_gt(ctx, base, pred)

    def _refresh_with_gt(self, ctx, base, pred, gt):
        state = ctx.panel.state
        report = analysis.build_report(
            base,
            pred,
            gt,
            top_n=_int(state.get(TOP_N), DEFAULT_TOP_N),
            search=state.get(SEARCH) or None,
            classes=None,
        )
        state.set(
            {
                "mode": "gt",
                "metrics": dataclasses.asdict(report.summary),
                "num_classes_shown": len(report.matrix.classes),
                "num_classes_total": report.matrix.num_classes_total,
                "pairs": [dataclasses.asdict(p) for p in report.pairs],
            }
        )
        ctx.panel.data.set(
            {
                "confusion_matrix": _heatmap_trace(report.matrix),
                "class_accuracy": _accuracy_trace(report.class_accuracy),
            }
        )

    def _refresh_without_gt(self, ctx, base, pred):
        summary = analysis.build_summary(base, pred)
        counts, edges = analysis.build_confidence_histogram(
            base, pred, bins=HISTOGRAM_BINS
        )
        ctx.panel.state.set(
            {
                "mode": "no_gt",
                "metrics": dataclasses.asdict(summary),
                "pairs": [],
                "histogram_edges": edges,
            }
        )
        ctx.panel.data.set(
            {"confidence_histogram": _histogram_trace(counts, edges)}
        )

    # --- events -------------------------------------------------------------
    def on_load(self, ctx):
        state = ctx.panel.state
        defaults = {
            TOP_N: DEFAULT_TOP_N,
            SEARCH: "",
            MIN_CONFIDENCE: DEFAULT_MIN_CONFIDENCE,
            MAX_MARGIN: DEFAULT_MAX_MARGIN,
            MAX_CONFIDENCE: DEFAULT_MAX_CONFIDENCE,
            REVIEW_TAG: analysis.DEFAULT_REVIEW_TAG,
        }
        state.set({k: v for k, v in defaults.items() if state.get(k) is None})
        state.set(
            {
                "base_view": ctx.view._serialize(),
                "panel_view": _app_view_key(ctx),
                "showing": None,
            }
        )
        self._refresh(ctx)

    def on_change_view(self, ctx):
        own = ctx.panel.state.panel_view
        current = _app_view_key(ctx)
        if ctx.request_params.get("view_name") is None and own == current:
            return  # the panel's own click: keep the base and the matrix
        ctx.panel.state.set(
            {
                "base_view": ctx.view._serialize(),
                "panel_view": current,
                "showing": None,
            }
        )
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.set({PRED: None, GT: None})
        self.on_load(ctx)

    def on_change_pred_field(self, ctx):
        ctx.panel.state.set({PRED: ctx.params.get("value"), GT: None})
        self._refresh(ctx)

    def on_change_gt_field(self, ctx):
        ctx.panel.state.set(GT, ctx.params.get("value") or NO_GT)
        self._refresh(ctx)

    def on_change_search(self, ctx):
        ctx.panel.state.set(SEARCH, ctx.params.get("value") or "")
        self._refresh(ctx)

    def on_change_top_n(self, ctx):
        value = _int(ctx.params.get("value"), None)
        if value is not None and value >= 1:
            ctx.panel.state.set(TOP_N, value)
            self._refresh(ctx)

    # --- clicks -------------------------------------------------------------
    def on_matrix_click(self, ctx):
        gt_class, pred_class = ctx.params.get("y"), ctx.params.get("x")
        pred, gt = self._fields(ctx)
        if gt is None or gt_class is None or pred_class is None:
            return
        view = analysis.cell_view(
            self._base(ctx), pred, gt, gt_class, pred_class
        )
        self._set_view(
            ctx,
            view,
            f"ground truth `{gt_class}`, predicted `{pred_class}`",
        )

    def on_pair_action(self, ctx):
        pairs = ctx.panel.state.pairs or []
        row = ctx.params.get("row")
        if not isinstance(row, int) or not 0 <= row < len(pairs):
            return
        ctx.params.update(x=pairs[row]["pred"], y=pairs[row]["gt"])
        self.on_matrix_click(ctx)

    def on_class_click(self, ctx):
        gt_class = ctx.params.get("x")
        pred, gt = self._fields(ctx)
        if gt is None or gt_class is None:
            return
        view = analysis.class_mistakes_view(
            self._base(ctx), pred, gt, gt_class
        )
        self._set_view(ctx, view, f"mistakes on `{gt_class}`")

    def on_histogram_click(self, ctx):
        pred, _ = self._fields(ctx)
        edges = ctx.panel.state.histogram_edges or []
        idx = ctx.params.get("idx")
        if not isinstance(idx, int) or not 0 <= idx < len(edges) - 1:
            return
        lower, upper = edges[idx], edges[idx + 1]
        view = analysis.confidence_range_view(
            self._base(ctx),
            pred,
            lower,
            upper,
            include_upper=idx == len(edges) - 2,
        )
        self._set_view(ctx, view, f"confidence in [{lower:.2f}, {upper:.2f})")

    # --- buttons ------------------------------------------------------------
    def show_mistakes(self, ctx):
        pred, gt = self._fields(ctx)
        if gt is not None:
            view = analysis.mistakes_view(self._base(ctx), pred, gt)
            self._set_view(ctx, view, "all mistakes")

    def show_confident_mistakes(self, ctx):
        pred, gt = self._fields(ctx)
        threshold = _float(
            ctx.panel.state.get(MIN_CONFIDENCE), DEFAULT_MIN_CONFIDENCE
        )
        if gt is not None:
            view = analysis.confident_mistakes_view(
                self._base(ctx), pred, gt, min_confidence=threshold
            )
            self._set_view(
                ctx, view, f"mistakes with confidence >= {threshold:g}"
            )

    def show_uncertain(self, ctx):
        pred, _ = self._fields(ctx)
        threshold = _float(ctx.panel.state.get(MAX_MARGIN), DEFAULT_MAX_MARGIN)
        view = analysis.uncertain_view(
            self._base(ctx), pred, max_margin=threshold
        )
        self._set_view(ctx, view, f"margin <= {threshold:g}")

    def show_low_confidence(self, ctx):
        pred, _ = self._fields(ctx)
        threshold = _float(
            ctx.panel.state.get(MAX_CONFIDENCE), DEFAULT_MAX_CONFIDENCE
        )
        view = analysis.low_confidence_view(
            self._base(ctx), pred, max_confidence=threshold
        )
        self._set_view(ctx, view, f"confidence <= {threshold:g}")

    def reset_view(self, ctx):
        ctx.ops.clear_view()
        ctx.panel.state.set(
            {
                "base_view": [],
                "panel_view": _view_key([], ctx.request_params.get("filters")),
                "showing": None,
            }
        )
        self._refresh(ctx)

    def tag_view(self, ctx):
        tag = str(ctx.panel.state.get(REVIEW_TAG) or "").strip()
        if not tag:
            ctx.ops.notify("Enter a tag first", variant="warning")
            return
        count = analysis.tag_samples(ctx.view, tag)
        ctx.ops.reload_samples()
        ctx.ops.notify(
            f"Tagged {count} samples with '{tag}'", variant="success"
        )

    # --- rendering ----------------------------------------------------------
    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        if state.mode == "empty" or state.get(PRED) is None:
            panel.md(
                "No `Classification` field on this dataset yet: run "
                "**BiFTA** (operator `run_bifta`) first.",
                name="empty",
            )
            return types.Property(panel, view=types.GridView())
        self._render_fields(ctx, panel)
        panel.md(_summary_markdown(state), name="summary")
        if state.mode == "gt":
            self._render_gt(ctx, panel)
        else:
            self._render_no_gt(ctx, panel)
        self._render_tagging(ctx, panel)
        return types.Property(
            panel, view=types.GridView(orientation="vertical", gap=2)
        )

    def _render_fields(self, ctx, panel):
        fields = analysis.classification_fields(ctx.dataset)
        state = ctx.panel.state
        pred = state.get(PRED)
        row = panel.h_stack("fields", gap=2, align_y="center")
        pred_choices = types.DropdownView(label="Predictions")
        for f in fields:
            pred_choices.add_choice(f, label=f)
        row.enum(
            "pred_field",
            pred_choices.values(),
            view=pred_choices,
            default=pred,
            on_change=self.on_change_pred_field,
        )
        gt_choices = types.DropdownView(label="Ground truth")
        for f in fields:
            if f != pred:
                gt_choices.add_choice(f, label=f)
        gt_choices.add_choice(NO_GT, label="(no ground truth)")
        row.enum(
            "gt_field",
            gt_choices.values(),
            view=gt_choices,
            default=state.get(GT),
            on_change=self.on_change_gt_field,
        )

    def _render_gt(self, ctx, panel):
        state = ctx.panel.state
        filters = panel.h_stack("filters", gap=2, align_y="center")
        filters.str(
            "search",
            label="Filter classes (substring)",
            default=state.get(SEARCH),
            on_change=self.on_change_search,
        )
        filters.int(
            "top_n",
            label="Most confused classes",
            min=1,
            default=state.get(TOP_N),
            on_change=self.on_change_top_n,
        )
        shown, total = state.num_classes_shown, state.num_classes_total
        n = max(shown or 0, 1)
        panel.plot(
            "confusion_matrix",
            layout=_matrix_layout(shown, total),
            config=PLOT_CONFIG,
            on_click=self.on_matrix_click,
            height=f"{max(360, 120 + 32 * n)}px",
        )
        self._render_pairs(panel)
        panel.plot(
            "class_accuracy",
            layout={
                "title": {"text": "Per-class accuracy (click: mistakes)"},
                "xaxis": {
                    "fixedrange": True,
                    "type": "category",
                    "automargin": True,
                },
                "yaxis": {
                    "fixedrange": True,
                    "range": [0, 1],
                    "title": {"text": "accuracy"},
                },
                "margin": {"t": 40, "b": 40},
            },
            config=PLOT_CONFIG,
            on_click=self.on_class_click,
            height="280px",
        )
        actions = panel.h_stack("actions", gap=1, align_y="center")
        actions.btn(
            "all_mistakes",
            label="All mistakes",
            on_click=self.show_mistakes,
            variant="contained",
        )
        actions.btn(
            "confident_mistakes",
            label="Confident mistakes",
            on_click=self.show_confident_mistakes,
            variant="outlined",
        )
        actions.float(
            "min_confidence",
            label="min confidence",
            min=0,
            max=1,
            default=state.get(MIN_CONFIDENCE),
        )
        self._render_uncertain(ctx, actions)

    def _render_pairs(self, panel):
        table = types.TableView()
        table.add_column("gt", label="Ground truth")
        table.add_column("pred", label="Predicted")
        table.add_column("count", label="Samples")
        table.add_row_action(
            "show_pair",
            self.on_pair_action,
            label="Show samples",
            icon="visibility",
            tooltip="Load this pair's samples",
        )
        panel.list(
            "pairs", types.Object(), view=table, label="Most confused pairs"
        )

    def _render_uncertain(self, ctx, row):
        state = ctx.panel.state
        row.btn(
            "uncertain",
            label="Uncertain predictions",
            on_click=self.show_uncertain,
            variant="outlined",
        )
        row.float(
            "max_margin",
            label="max margin",
            min=0,
            max=1,
            default=state.get(MAX_MARGIN),
        )
        row.btn(
            "reset",
            label="Reset view",
            icon="restart_alt",
            on_click=self.reset_view,
        )

    def _render_no_gt(self, ctx, panel):
        state = ctx.panel.state
        panel.plot(
            "confidence_histogram",
            layout={
                "title": {"text": "Prediction confidence (click: samples)"},
                "xaxis": {
                    "fixedrange": True,
                    "range": [0, 1],
                    "title": {"text": "confidence"},
                },
                "yaxis": {"fixedrange": True, "title": {"text": "samples"}},
                "bargap": 0.05,
                "margin": {"t": 40},
            },
            config=PLOT_CONFIG,
            on_click=self.on_histogram_click,
            height="300px",
        )
        actions = panel.h_stack("actions", gap=1, align_y="center")
        actions.btn(
            "low_confidence",
            label="Low confidence",
            on_click=self.show_low_confidence,
            variant="contained",
        )
        actions.float(
            "max_confidence",
            label="max confidence",
            min=0,
            max=1,
            default=state.get(MAX_CONFIDENCE),
        )
        self._render_uncertain(ctx, actions)

    def _render_tagging(self, ctx, panel):
        row = panel.h_stack("tagging", gap=1, align_y="center")
        row.str(
            "review_tag",
            label="Review tag",
            default=ctx.panel.state.get(REVIEW_TAG),
        )
        row.btn(
            "tag_view",
            label="Tag current view",
            icon="local_offer",
            on_click=self.tag_view,
            variant="outlined",
        )


class ExplanationPanel(foo.Panel):
    """Why the current sample got its prediction: runner-up, best
    description and the crops that mattered."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="bifta_explanation",
            label="BiFTA explanation",
            icon=ICON,
            surfaces="modal",
            help_markdown=(
                "Predicted class vs runner-up, the best-matching description "
                "and the retained crops (shown on the image) of the current "
                "sample."
            ),
        )

    def _resolve(self, ctx):
        """Resolves the chosen prediction field (its ground-truth and crops
        fields, the run's classes) from one run-records snapshot and keeps
        the result in the panel state, where sample changes read it."""
        dataset = ctx.dataset
        pred = ctx.panel.state.pred_field
        if pred not in analysis.classification_fields(dataset):
            pred = None
        fields = analysis.resolve_prediction_fields(
            dataset, pred, records=RunRecords.load(dataset)
        )
        if fields is None:  # no prediction field on this dataset
            ctx.panel.state.set({"pred_field": None, "resolved": None})
            return
        ctx.panel.state.set(
            {
                "pred_field": fields.pred_field,
                "resolved": dataclasses.asdict(fields),
            }
        )

    def _explain(self, ctx):
        """Explains the current sample with the resolved fields (no run
        records are read here)."""
        resolved = ctx.panel.state.resolved
        sample_id = ctx.current_sample
        if not resolved or sample_id is None:
            ctx.panel.state.set({"explanation": None, "crops": []})
            return
        fields = analysis.PredictionFields(**resolved)
        explanation = analysis.explain_prediction(
            ctx.dataset[sample_id],
            fields.pred_field,
            classes=fields.classes,
            gt_field=fields.gt_field,
            crops_field=fields.crops_field,
        )
        ctx.panel.state.set(
            {
                "explanation": (
                    None
                    if explanation is None
                    else _explanation_markdown(explanation)
                ),
                "crops": _crop_rows(explanation),
            }
        )
        ctx.panel.data.set({"top_classes": _top_classes_trace(explanation)})

    def _show_crops(self, ctx):
        resolved = ctx.panel.state.resolved or {}
        fields = [
            resolved.get(role)
            for role in ("pred_field", "crops_field", "gt_field")
        ]
        schema = ctx.dataset.get_field_schema()
        ctx.ops.set_active_fields([f for f in fields if f and f in schema])

    def on_load(self, ctx):
        self._resolve(ctx)
        self._explain(ctx)
        self._show_crops(ctx)

    def on_change_current_sample(self, ctx):
        self._explain(ctx)

    def on_change_pred_field(self, ctx):
        ctx.panel.state.pred_field = ctx.params.get("value")
        self.on_load(ctx)

    def show_crops(self, ctx):
        self._show_crops(ctx)

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        fields = analysis.classification_fields(ctx.dataset)
        choices = types.DropdownView(label="Predictions")
        for f in fields:
            choices.add_choice(f, label=f)
        panel.enum(
            "pred_field",
            choices.values(),
            view=choices,
            default=state.pred_field,
            on_change=self.on_change_pred_field,
        )
        if not state.explanation:
            panel.md(
                "This sample has no prediction in this field.",
                name="explanation",
            )
            return types.Property(
                panel, view=types.GridView(orientation="vertical")
            )
        panel.md(state.explanation, name="explanation")
        panel.plot(
            "top_classes",
            layout={
                "title": {"text": "Class probabilities"},
                "xaxis": {"fixedrange": True, "range": [0, 1]},
                "yaxis": {
                    "fixedrange": True,
                    "type": "category",
                    "autorange": "reversed",
                    "automargin": True,
                },
                "margin": {"t": 40},
            },
            config=PLOT_CONFIG,
            height="220px",
        )
        table = types.TableView()
        for key, label in (
            ("rank", "#"),
            ("weight", "Weight"),
            ("best", "Best"),
            ("box", "Box [x, y, w, h]"),
        ):
            table.add_column(key, label=label)
        panel.list("crops", types.Object(), view=table, label="Top crops")
        panel.btn(
            "show_crops",
            label="Show crops on the image",
            icon="crop",
            on_click=self.show_crops,
            variant="outlined",
        )
        return types.Property(
            panel, view=types.GridView(orientation="vertical", gap=2)
        )


# --- traces and text (pure functions of analysis results) --------------------
def _float(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _heatmap_trace(matrix: analysis.ConfusionMatrix) -> dict:
    counts = matrix.matrix
    off = counts.copy()
    if len(off):
        off[range(len(off)), range(len(off))] = 0
    # saturate the diagonal so that the (smaller) confusions stay visible
    zmax = int(off.max()) if off.size and off.max() > 0 else None
    trace = {
        "type": "heatmap",
        "z": counts.tolist(),
        "x": list(matrix.classes),
        "y": list(matrix.classes),
        "colorscale": [[0.0, "#2a2a2a"], [1.0, ACCENT]],
        "hovertemplate": "ground truth: %{y}<br>predicted: %{x}"
        "<br>samples: %{z}<extra></extra>",
    }
    if zmax is not None:
        trace.update(zmin=0, zmax=zmax)
    if len(matrix.classes) <= MAX_ANNOTATED_CLASSES:
        trace["texttemplate"] = "%{z}"
    return trace


def _matrix_layout(shown, total) -> dict:
    title = "Confusion matrix (click a cell: its samples)"
    if shown is not None and total is not None and shown < total:
        title += f" - {shown} of {total} classes"
    return {
        "title": {"text": title},
        "xaxis": {
            "fixedrange": True,
            "type": "category",
            "title": {"text": "predicted"},
            "automargin": True,
        },
        "yaxis": {
            "fixedrange": True,
            "type": "category",
            "title": {"text": "ground truth"},
            "autorange": "reversed",
            "automargin": True,
        },
        "margin": {"t": 40},
    }


def _accuracy_trace(rows: list[analysis.ClassAccuracy]) -> dict:
    rows = sorted(rows, key=lambda r: (r.accuracy, -r.support, r.label))
    return {
        "type": "bar",
        "marker": {"color": ACCENT},
        "x": [r.label for r in rows],
        "y": [r.accuracy for r in rows],
        "text": [f"{r.correct}/{r.support}" for r in rows],
        "hovertemplate": "%{x}: %{y:.1%} (%{text})<extra></extra>",
    }


def _histogram_trace(counts, edges) -> dict:
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    return {
        "type": "bar",
        "marker": {"color": ACCENT},
        "x": centers,
        "y": counts,
        "width": [b - a for a, b in zip(edges[:-1], edges[1:])],
        "hovertemplate": "confidence %{x:.2f}: %{y} samples<extra></extra>",
    }


def _summary_markdown(state) -> str:
    m = collections.defaultdict(int, state.metrics or {})
    gt = state.get(GT)
    samples = f"samples {m['num_samples']}"
    if state.mode == "gt":
        text = (
            f"**Accuracy** {_fmt_pct((state.metrics or {}).get('accuracy'))} "
            f"({m['num_correct']} / {m['num_evaluated']}) · "
            f"**mistakes** {m['num_mistakes']} · {samples} "
            f"(no prediction: {m['num_samples'] - m['num_predicted']}, "
            f"no ground truth: {m['num_samples'] - m['num_labeled']})"
            f"  \n`{state.get(PRED)}` vs `{gt}`"
        )
    else:
        where = "field" if gt == NO_GT else f"in `{gt}` for these samples"
        text = (
            f"**No ground truth {where}**: confidence and margin browsing "
            f"only. {samples.capitalize()}, with a prediction "
            f"{m['num_predicted']}."
        )
    if state.showing:
        text += f"  \nShowing: {state.showing}"
    return text


def _explanation_markdown(e: analysis.Explanation) -> str:
    lines = [
        f"**Predicted** `{e.label}`"
        + (f" ({_fmt_pct(e.confidence)})" if e.confidence is not None else "")
    ]
    if e.runner_up is not None:
        lines.append(
            f"**Runner-up** `{e.runner_up}` "
            f"({_fmt_pct(e.runner_up_probability)})"
        )
    if e.margin is not None:
        lines.append(f"**Margin** {e.margin:.3f}")
    if e.gt_label is not None:
        verdict = "correct" if e.gt_label == e.label else "mistake"
        lines.append(f"**Ground truth** `{e.gt_label}` ({verdict})")
    if e.best_description:
        lines.append(f"**Best-matching description**: {e.best_description}")
    return "  \n".join(lines)


def _crop_rows(e: analysis.Explanation | None) -> list[dict]:
    if e is None:
        return []
    return [
        {
            "rank": i + 1,
            "weight": None if c["weight"] is None else round(c["weight"], 4),
            "best": "yes" if c["best"] else "",
            "box": ", ".join(f"{v:.2f}" for v in c["bounding_box"]),
        }
        for i, c in enumerate(e.crops)
    ]


def _top_classes_trace(e: analysis.Explanation | None) -> dict:
    top = e.top_classes if e is not None else []
    return {
        "type": "bar",
        "orientation": "h",
        "marker": {"color": ACCENT},
        "x": [p for _, p in top],
        "y": [c for c, _ in top],
        "hovertemplate": "%{y}: %{x:.1%}<extra></extra>",
    }
