"""Panels of the ``@bifta/bifta`` plugin: browse (mis)predictions.

- ``bifta_mispredictions`` (grid): accuracy and counts, a confusion-matrix
  heatmap (click a cell: its samples), the most confused pairs (row action:
  their samples), per-class accuracy (click a bar: that class's mistakes),
  buttons for all / confident mistakes, uncertain predictions and reset, and
  tagging of the current view for review. Without ground truth: a confidence
  histogram (click a bin: its samples) and the low-confidence / uncertain
  buttons. Below, the run list (date, model, method, accuracy, newest first;
  a row's action switches the panel to that run); a timer checks every
  ``POLL_MS`` for runs written elsewhere (the SDK, another tab, a delegated
  worker) and offers the new one in a notice, without touching the view.
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

from ..sdk import analysis, rules
from ..sdk.accept import accept_labels
from ..sdk.records import RunRecords, runs_signature
from ..sdk.summaries import run_list_rows

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
#: rows of the confused-pairs table (more would push the panel's other
#: sections screens down)
MAX_PAIR_ROWS = 8
#: height of the bar of a class at 0% accuracy, so that it can be clicked
MIN_BAR = 0.02
ZERO_COLOR = "#d32f2f"
#: crop thumbnails shown in the explanation panel
MAX_THUMBNAILS = 3
#: rows of the run list (newest first)
MAX_RUN_ROWS = 6
#: how often an open panel checks for runs written elsewhere (ms): one
#: fingerprint query of the run records (``runs_signature``) per tick
POLL_MS = 4000

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
# The values the matrix was computed with, kept under keys no input is bound
# to: the server never writes an input's own path after load (see
# on_change_search).
APPLIED_SEARCH = "applied.search"
APPLIED_TOP_N = "applied.top_n"
MIN_CONFIDENCE = "actions.min_confidence"
MAX_MARGIN = "actions.max_margin"
MAX_CONFIDENCE = "actions.max_confidence"
REVIEW_TAG = "tagging.review_tag"
CROPS_MODE = "show_crops"
ACCEPT_MIN = "accept.accept_min_confidence"
DEFAULT_ACCEPT_MIN = 0.8
#: where accepted labels go when no ground-truth field is chosen
DEFAULT_GT_FIELD = "ground_truth"


def _clean_stages(stages) -> list[dict]:
    """Serialized view stages without their per-stage uuids."""
    return [
        {k: v for k, v in dict(s).items() if k != "_uuid"}
        for s in (stages or [])
    ]


def _view_key(stages) -> str:
    """Canonical form of an App view's stages. Sidebar filters are left out
    on purpose: they refine what the grid shows, never the panel's metrics."""
    return json.dumps(_clean_stages(stages), sort_keys=True, default=str)


def _app_stages(ctx) -> list[dict]:
    return _clean_stages(ctx.request_params.get("view"))


def _extends(stages: list[dict], prefix: list[dict]) -> bool:
    """Whether ``stages`` starts with all of ``prefix`` (e.g. the panel's own
    view refined in the view bar)."""
    return len(stages) >= len(prefix) and _view_key(
        stages[: len(prefix)]
    ) == _view_key(prefix)


_VIEW_STORE = "bifta_panel_views"
_UNSET = object()


def _remember_views(ctx, base=_UNSET, own=_UNSET, showing=_UNSET) -> None:
    """Records the panel's base view and the views the panel itself set.

    Kept in panel state for the render, and in FiftyOne's execution store
    (server side, written before the view change is sent). The App may
    deliver ``on_change_view`` events late and out of order (under load, an
    event for the base view can arrive after the panel set its own view), so
    the panel remembers every view it set since the base changed, each with
    its description, not only the last one: recognising a view never
    depends on the order of the events.

    Args:
        base: the new base stages (forgets the panel's own views).
        own: stages of a view the panel just set (added to those it set).
        showing: the description shown for the current view.
    """
    store = ctx.store(_VIEW_STORE)
    update = {}
    owned = None
    if base is not _UNSET:
        update["base_view"] = base
        owned = {}
    if own is not _UNSET:
        update["panel_view"] = own
        if owned is None:
            owned = dict(store.get(f"{ctx.panel.id}:owned") or {})
        owned[_view_key(own)] = showing if showing is not _UNSET else None
    if showing is not _UNSET:
        update["showing"] = showing
    ctx.panel.state.set(update)
    for key in ("base_view", "panel_view"):
        if key in update:
            store.set(f"{ctx.panel.id}:{key}", update[key])
    if owned is not None:
        store.set(f"{ctx.panel.id}:owned", owned)


def _remembered_views(ctx) -> tuple[list, list, dict]:
    """(base stages, last own stages, {view key: description} of every view
    the panel set since the base changed): the execution store's, else
    panel state's."""
    store = ctx.store(_VIEW_STORE)
    state = ctx.panel.state
    base = store.get(f"{ctx.panel.id}:base_view")
    own = store.get(f"{ctx.panel.id}:panel_view")
    owned = store.get(f"{ctx.panel.id}:owned") or {}
    return (
        state.base_view or [] if base is None else base,
        state.panel_view or [] if own is None else own,
        owned,
    )


def _known_view(stages, base, owned: dict):
    """What the panel shows when the App is on ``stages``: the description
    of one of the panel's own views (``owned``), None for its base, or
    ``_UNSET`` for a view the panel does not know (the user's)."""
    key = _view_key(stages)
    if key in owned:
        return owned[key]
    if key == _view_key(base):
        return None
    return _UNSET


def _is_crops_filter(stage: dict, crops_field: str) -> bool:
    """Whether a serialized stage is the best-crop filter of
    :func:`analysis.best_crops_view` on ``crops_field``."""
    if not str(stage.get("_cls", "")).endswith("FilterLabels"):
        return False
    kwargs = dict(stage.get("kwargs") or [])
    return kwargs.get("field") == crops_field


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
    def _fields(self, ctx, records=None):
        """(pred_field, gt_field or None), validated against the schema.

        The fields live in the panel state; only a missing or stale one is
        resolved again, from one run-records snapshot (``records``, or one
        read here: a panel load reads the records once and other events
        not at all).
        """
        state = ctx.panel.state
        # the fields of the collection the metrics are built on: on a
        # to_patches() / to_frames() view, a patches or frames run's
        # per-object / per-frame fields are plain Classification fields
        base = self._base(ctx)
        fields = rules.classification_fields(base)
        pred, gt = state.get(PRED), state.get(GT)
        if pred not in fields:
            if records is None:
                records = RunRecords.load(ctx.dataset)
            pred = analysis.default_prediction_field(base, records)
        if gt != NO_GT and (gt not in fields or gt == pred):
            if records is None:
                records = RunRecords.load(ctx.dataset)
            gt = analysis.default_gt_field(base, pred, records) or NO_GT
        if (pred, gt) != (state.get(PRED), state.get(GT)):
            state.set({PRED: pred, GT: gt})
        return pred, (None if gt == NO_GT else gt)

    def _base(self, ctx):
        """The collection the metrics (and the panel's views) are built on:
        the user's own view stages, without sidebar filters and without any
        view the panel set."""
        stages = ctx.store(_VIEW_STORE).get(f"{ctx.panel.id}:base_view")
        if stages is None:
            stages = ctx.panel.state.base_view
        if stages is None:
            stages = _app_stages(ctx)
        return fosv.get_view(ctx.dataset, stages=stages, reload=False)

    def _set_view(self, ctx, view, description):
        """Loads ``view`` in the App, remembering it as the panel's own."""
        stages = _clean_stages(view._serialize())
        _remember_views(ctx, own=stages, showing=description)
        ctx.ops.set_view(view)

    # --- computation --------------------------------------------------------
    def _refresh(self, ctx, search=None, top_n=None, records=None):
        """Recomputes everything; ``search`` / ``top_n`` (default: from the
        state) are the values of an input event; ``records``: a run-records
        snapshot already read by this event."""
        pred, gt = self._fields(ctx, records)
        state = ctx.panel.state
        if pred is None:
            state.set({"mode": "empty", "metrics": None, "pairs": []})
            return
        base = self._base(ctx)
        if gt is not None and base.exists(f"{gt}.label").limit(1).count():
            if search is None:
                search = state.get(APPLIED_SEARCH) or ""
            if top_n is None:
                top_n = _int(state.get(APPLIED_TOP_N), DEFAULT_TOP_N)
            self._refresh_with_gt(ctx, base, pred, gt, search, top_n)
        else:
            self._refresh_without_gt(ctx, base, pred)

    def _refresh_with_gt(self, ctx, base, pred, gt, search, top_n):
        state = ctx.panel.state
        report = analysis.build_report(
            base,
            pred,
            gt,
            top_n=top_n,
            search=search or None,
            max_pairs=None,
            classes=None,
        )
        state.set(
            {
                "mode": "gt",
                "metrics": dataclasses.asdict(report.summary),
                "num_classes_shown": len(report.matrix.classes),
                "matrix_classes": list(report.matrix.classes),
                "accuracy_classes": _accuracy_trace(report.class_accuracy)["x"],
                "num_classes_total": report.matrix.num_classes_total,
                "pairs": [
                    dataclasses.asdict(p) for p in report.pairs[:MAX_PAIR_ROWS]
                ],
                "num_pairs_total": len(report.pairs),
                "class_metrics": _class_metric_rows(report.class_metrics),
            }
        )
        right, wrong, edges = analysis.build_confidence_histogram_by_outcome(
            base, pred, gt, bins=HISTOGRAM_BINS
        )
        state.set("histogram_edges", edges)
        ctx.panel.data.set(
            {
                "confusion_matrix": _heatmap_trace(report.matrix),
                "class_accuracy": _accuracy_trace(report.class_accuracy),
                "confidence_by_outcome": _outcome_traces(right, wrong, edges),
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
            ACCEPT_MIN: DEFAULT_ACCEPT_MIN,
        }
        state.set({k: v for k, v in defaults.items() if state.get(k) is None})
        stages = _app_stages(ctx)
        restored = self._restored_showing(ctx, stages)
        if restored is _UNSET:
            _remember_views(ctx, base=stages, own=stages, showing=None)
        else:
            state.set("showing", restored)
        signature = runs_signature(ctx.dataset)  # first: see _load_runs
        records = RunRecords.load(ctx.dataset)
        self._load_runs(ctx, records, signature)
        self._refresh(ctx, records=records)

    @staticmethod
    def _restored_showing(ctx, stages):
        """On load, the description of ``stages`` if it is a view this panel
        set (or its base) before the App reloaded: the App restores the
        panel and its last view after a reload, and the metrics must stay on
        the base the panel had, not re-base on a cell's samples. ``_UNSET``
        when the panel has no such memory (a new panel: ``stages`` is the
        base)."""
        if ctx.store(_VIEW_STORE).get(f"{ctx.panel.id}:base_view") is None:
            return _UNSET
        base, _, owned = _remembered_views(ctx)
        return _known_view(stages, base, owned)

    # --- runs ---------------------------------------------------------------
    def _load_runs(self, ctx, records=None, signature=None):
        """Keeps the run list (newest first), the run keys and their
        fingerprint in the panel state; clears the new-run notice."""
        if signature is None:  # first: a run added meanwhile shows next tick
            signature = runs_signature(ctx.dataset)
        records = records or RunRecords.load(ctx.dataset)
        rows = run_list_rows(records.infos())
        ctx.panel.state.set(
            {
                "runs": rows[:MAX_RUN_ROWS],
                "num_runs": len(rows),
                "run_keys": records.keys,
                "runs_signature": signature,
                "new_run": None,
            }
        )

    def on_poll(self, ctx):
        """Timer tick: a run added, deleted or finished elsewhere updates the
        run list; a new one is offered in a notice (the user's view, fields
        and metrics stay as they are until they switch)."""
        state = ctx.panel.state
        signature = runs_signature(ctx.dataset)
        if signature == state.get("runs_signature"):
            return
        known = set(state.get("run_keys") or [])
        offered = state.get("new_run")
        records = RunRecords.load(ctx.dataset)
        self._load_runs(ctx, records, signature)
        if state.get("mode") in (None, "empty"):
            # nothing to keep: show the new run at once
            self._refresh(ctx, records=records)
            return
        latest = records.latest()
        if latest is not None and latest not in known:
            offered = next(r for r in state.get("runs") if r["key"] == latest)
        if offered is not None and offered["key"] in records:
            state.set("new_run", offered)

    def _switch_to_run(self, ctx, row: dict):
        """The panel shows ``row``'s run: its label field, against its
        ground truth (if it had one and it still exists)."""
        fields = rules.classification_fields(ctx.dataset)
        if row.get("label_field") not in fields:
            ctx.ops.notify(
                f"Run '{row.get('key')}' has no Classification field "
                f"'{row.get('label_field')}' (yet)",
                variant="warning",
            )
            return
        gt = row.get("gt_field")
        ctx.panel.state.set(
            {PRED: row["label_field"], GT: gt if gt in fields else None, "new_run": None}
        )
        self._refresh(ctx)

    def switch_to_new_run(self, ctx):
        row = ctx.panel.state.get("new_run")
        if row:
            self._switch_to_run(ctx, row)

    def on_run_action(self, ctx):
        rows = ctx.panel.state.get("runs") or []
        index = ctx.params.get("row")
        if isinstance(index, int) and 0 <= index < len(rows):
            self._switch_to_run(ctx, rows[index])

    def on_change_view(self, ctx):
        """Re-bases the metrics only on a view the user built: sidebar
        filters, the views the panel set and refinements of them keep the
        base (metrics come from the run's samples, not from a view the
        panel set)."""
        current = _app_stages(ctx)
        base, _, owned = _remembered_views(ctx)
        if ctx.request_params.get("view_name") is None:
            # one of the panel's own views, or back to the base: keep all
            showing = _known_view(current, base, owned)
            if showing is not _UNSET:
                if ctx.panel.state.get("showing") != showing:
                    ctx.panel.state.set("showing", showing)
                return
            if any(_extends(current, json.loads(k)) for k in owned if k != _view_key(base)):
                return  # a refinement of the panel's own view
        _remember_views(ctx, base=current, showing=None)
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

    # The typed value of an input is never written back to its own path: a
    # write from here lands late, while the user keeps typing, remounts the
    # box with the old value and fires its on_change again (an endless
    # echo). The value used is kept under an ``applied`` key instead.
    def on_change_search(self, ctx):
        value = ctx.params.get("value") or ""
        ctx.panel.state.set(APPLIED_SEARCH, value)
        self._refresh(ctx, search=value)

    def on_change_top_n(self, ctx):
        value = _int(ctx.params.get("value"), None)
        if value is not None and value >= 1:
            ctx.panel.state.set(APPLIED_TOP_N, value)
            self._refresh(ctx, top_n=value)

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
        _remember_views(ctx, base=[], own=[], showing=None)
        ctx.ops.clear_view()
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

    def accept_view(self, ctx):
        """Accepts the predictions of the current view above the threshold
        into the ground-truth field; labels already there are kept."""
        pred, gt = self._fields(ctx)
        if pred is None:
            return
        threshold = _float(ctx.panel.state.get(ACCEPT_MIN), DEFAULT_ACCEPT_MIN)
        target = gt or DEFAULT_GT_FIELD
        result = accept_labels(
            ctx.view, pred, target, min_confidence=threshold
        )
        ctx.ops.reload_samples()
        ctx.ops.notify(result.message(), variant="success")
        self._refresh(ctx)

    # --- rendering ----------------------------------------------------------
    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        if state.mode is None:  # before on_load has answered
            panel.md("Loading the predictions...", name="loading")
            return types.Property(panel, view=types.GridView())
        panel.view(
            "run_watch",
            types.TimerView(interval=POLL_MS, on_interval=self.on_poll),
        )
        if state.mode == "empty" or state.get(PRED) is None:
            panel.md(
                "No `Classification` field on this dataset yet: run "
                "**BiFTA** (operator `run_bifta`) first.",
                name="empty",
            )
            return types.Property(panel, view=types.GridView())
        self._render_new_run(ctx, panel)
        self._render_fields(ctx, panel)
        panel.md(_summary_markdown(state), name="summary")
        if state.mode == "gt":
            self._render_gt(ctx, panel)
        else:
            self._render_no_gt(ctx, panel)
        self._render_tagging(ctx, panel)
        self._render_runs(ctx, panel)
        return types.Property(
            panel, view=types.GridView(orientation="vertical", gap=2)
        )

    def _render_new_run(self, ctx, panel):
        row = ctx.panel.state.get("new_run")
        if not row:
            return
        notice = panel.h_stack("new_run", gap=2, align_y="center")
        notice.md(
            f"**New run available:** `{row['key']}` ({row['method']}, "
            f"{row['model']}, {row['status']}) -> `{row['label_field']}`",
            name="new_run_text",
        )
        notice.btn(
            "switch_to_new_run",
            label="Switch to it",
            icon="sync",
            on_click=self.switch_to_new_run,
            variant="contained",
        )

    def _render_runs(self, ctx, panel):
        state = ctx.panel.state
        table = types.TableView()
        for key, label in (
            ("date", "Date"),
            ("key", "Run"),
            ("model", "Model"),
            ("method", "Method"),
            ("accuracy", "Accuracy"),
            ("samples", "Samples"),
            ("status", "Status"),
        ):
            table.add_column(key, label=label)
        table.add_row_action(
            "show_run",
            self.on_run_action,
            label="Show this run",
            icon="open_in_browser",
            tooltip="Switch the panel to this run's predictions",
        )
        total, shown = state.get("num_runs") or 0, len(state.get("runs") or [])
        label = "Runs (newest first)"
        if total > shown:
            label += f": {shown} of {total}"
        panel.list("runs", types.Object(), view=table, label=label)

    def _render_fields(self, ctx, panel):
        fields = rules.classification_fields(self._base(ctx))
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
        self._render_actions(ctx, panel, gt=True)
        filters = panel.h_stack("filters", gap=2, align_y="center")
        # no default: the App keeps the typed value at this path, and a
        # default from the state would reset the box while the user types
        filters.str(
            "search",
            label="Filter classes (substring)",
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
            layout=_matrix_layout(shown, total, state.matrix_classes),
            config=PLOT_CONFIG,
            on_click=self.on_matrix_click,
            height=f"{max(360, 120 + 32 * n)}px",
        )
        panel.plot(
            "class_accuracy",
            layout={
                "title": {"text": "Per-class accuracy (click: mistakes)"},
                "xaxis": _category_axis(state.accuracy_classes),
                "yaxis": {
                    "fixedrange": True,
                    "range": [0, 1.1],
                    "title": {"text": "accuracy"},
                },
                "margin": {"t": 40, "b": 40},
            },
            config=PLOT_CONFIG,
            on_click=self.on_class_click,
            height="280px",
        )
        self._render_pairs(ctx, panel)
        table = types.TableView()
        for key, label in (
            ("label", "Class"),
            ("precision", "Precision"),
            ("recall", "Recall"),
            ("support", "Samples"),
        ):
            table.add_column(key, label=label)
        panel.list(
            "class_metrics",
            types.Object(),
            view=table,
            label="Lowest recall (per-class precision and recall)",
        )
        panel.plot(
            "confidence_by_outcome",
            layout={
                "title": {"text": "Confidence: correct vs wrong (click: bin)"},
                "barmode": "stack",
                "xaxis": {
                    "fixedrange": True,
                    "range": [0, 1],
                    "title": {"text": "confidence"},
                },
                "yaxis": {"fixedrange": True, "title": {"text": "samples"}},
                "legend": {"orientation": "h"},
                "margin": {"t": 40},
            },
            config=PLOT_CONFIG,
            on_click=self.on_histogram_click,
            height="280px",
        )

    def _render_pairs(self, ctx, panel):
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
        total = ctx.panel.state.num_pairs_total or 0
        shown = len(ctx.panel.state.pairs or [])
        label = "Most confused pairs"
        if total > shown:
            label += f" (top {shown} of {total})"
        panel.list("pairs", types.Object(), view=table, label=label)

    def _render_actions(self, ctx, panel, gt: bool):
        """The buttons first (above the plots); "Reset view" leads the row
        so that a narrow panel never cuts it off."""
        state = ctx.panel.state
        row = panel.h_stack("actions", gap=1, align_y="center")
        row.btn(
            "reset",
            label="Reset view",
            icon="restart_alt",
            on_click=self.reset_view,
        )
        if gt:
            row.btn(
                "all_mistakes",
                label="All mistakes",
                on_click=self.show_mistakes,
                variant="contained",
            )
            row.btn(
                "confident_mistakes",
                label="Confident mistakes",
                on_click=self.show_confident_mistakes,
                variant="outlined",
            )
            row.float(
                "min_confidence",
                label="min confidence",
                min=0,
                max=1,
                default=state.get(MIN_CONFIDENCE),
            )
        else:
            row.btn(
                "low_confidence",
                label="Low confidence",
                on_click=self.show_low_confidence,
                variant="contained",
            )
            row.float(
                "max_confidence",
                label="max confidence",
                min=0,
                max=1,
                default=state.get(MAX_CONFIDENCE),
            )
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

    def _render_no_gt(self, ctx, panel):
        self._render_actions(ctx, panel, gt=False)
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
        gt = ctx.panel.state.get(GT)
        target = DEFAULT_GT_FIELD if gt in (None, NO_GT) else gt
        accept = panel.h_stack("accept", gap=1, align_y="center")
        accept.btn(
            "accept_view",
            label=f"Accept predictions of the view into {target}",
            icon="done_all",
            on_click=self.accept_view,
            variant="outlined",
        )
        accept.float(
            "accept_min_confidence",
            label="above confidence",
            min=0,
            max=1,
            default=ctx.panel.state.get(ACCEPT_MIN),
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
        if pred not in rules.classification_fields(dataset):
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
            ctx.panel.state.set({"explanation": None, "crops": [], "thumbs": {}})
            return
        fields = analysis.PredictionFields(**resolved)
        sample = ctx.dataset[sample_id]
        explanation = analysis.explain_prediction(
            sample,
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
                "thumbs": _thumbnails(sample.filepath, explanation),
            }
        )
        ctx.panel.data.set({"top_classes": _top_classes_trace(explanation)})

    def _show_crops(self, ctx, mode=None):
        """Draws the crops on the modal's image: ``"best"`` (default) only
        the best crop, ``"all"`` every crop. The modal draws the App view's
        labels, so the best-only choice is a ``filter_labels`` stage on the
        crops field (``only_matches=False``: no sample leaves the view)
        appended to the user's stages; the fields to draw are the modal's
        active fields."""
        state = ctx.panel.state
        mode = mode or state.get(CROPS_MODE) or "best"
        resolved = state.resolved or {}
        crops = resolved.get("crops_field")
        fields = [
            resolved.get(role)
            for role in ("pred_field", "crops_field", "gt_field")
        ]
        schema = ctx.dataset.get_field_schema()
        ctx.ops.set_active_fields([f for f in fields if f and f in schema])
        if crops not in schema:
            return
        stages = _app_stages(ctx)
        kept = [st for st in stages if not _is_crops_filter(st, crops)]
        view = fosv.get_view(ctx.dataset, stages=kept, reload=False)
        if mode == "best":
            view = analysis.best_crops_view(view, crops)
        if _view_key(view._serialize()) != _view_key(stages):
            ctx.ops.set_view(view)

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
        self._show_crops(ctx, mode=ctx.params.get("value"))

    def _accept(self, ctx, runner_up: bool):
        resolved = ctx.panel.state.resolved or {}
        sample_id = ctx.current_sample
        if not resolved or sample_id is None:
            return
        target = resolved.get("gt_field") or DEFAULT_GT_FIELD
        result = accept_labels(
            ctx.dataset.select(sample_id),
            resolved["pred_field"],
            target,
            overwrite=True,
            runner_up=runner_up,
        )
        ctx.ops.reload_samples()
        ctx.ops.notify(result.message(), variant="success")
        self._explain(ctx)

    def accept_prediction(self, ctx):
        """The current sample's prediction becomes its ground truth."""
        self._accept(ctx, runner_up=False)

    def accept_runner_up(self, ctx):
        """The current sample's runner-up becomes its ground truth."""
        self._accept(ctx, runner_up=True)

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        fields = rules.classification_fields(ctx.dataset)
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
        gt = (state.resolved or {}).get("gt_field") or DEFAULT_GT_FIELD
        accept = panel.h_stack("accept", gap=1, align_y="center")
        accept.btn(
            "accept_prediction",
            label=f"Accept prediction into {gt}",
            icon="check",
            on_click=self.accept_prediction,
            variant="contained",
        )
        accept.btn(
            "accept_runner_up",
            label="Accept runner-up",
            icon="swap_horiz",
            on_click=self.accept_runner_up,
            variant="outlined",
        )
        thumbs = state.thumbs or {}
        if thumbs:
            row = panel.h_stack("thumbs", gap=1, align_y="center")
            for key in sorted(thumbs):
                row.img(key, height="96px", alt_text=f"crop {key[1:]}")
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
        modes = types.RadioGroup(orientation="horizontal")
        modes.add_choice("best", label="best crop")
        modes.add_choice("all", label="all crops")
        panel.enum(
            "show_crops",
            modes.values(),
            label="Crops on the image",
            view=modes,
            default="best",
            on_change=self.show_crops,
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


def _category_axis(classes, reversed_=False, **extra) -> dict:
    """A category axis showing exactly ``classes``: plotly keeps the
    categories of earlier data on a reused axis, so a filtered matrix would
    still show rows of classes no longer in it."""
    axis = {"fixedrange": True, "type": "category", "automargin": True}
    if classes is not None:
        n = len(classes)
        axis.update(
            categoryorder="array",
            categoryarray=list(classes),
            range=[n - 0.5, -0.5] if reversed_ else [-0.5, n - 0.5],
        )
    elif reversed_:
        axis["autorange"] = "reversed"
    axis.update(extra)
    return axis


def _matrix_layout(shown, total, classes=None) -> dict:
    """``classes``: the matrix's, in order (None: plotly's own axes)."""
    title = "Confusion matrix (click a cell: its samples)"
    if shown is not None and total is not None:
        title += f" - {shown} of {total} classes"
    return {
        "title": {"text": title},
        "xaxis": _category_axis(classes, title={"text": "predicted"}),
        "yaxis": _category_axis(
            classes, reversed_=True, title={"text": "ground truth"}
        ),
        "margin": {"t": 40},
    }


def _accuracy_trace(rows: list[analysis.ClassAccuracy]) -> dict:
    rows = sorted(rows, key=lambda r: (r.accuracy, -r.support, r.label))
    return {
        "type": "bar",
        # a class at 0% gets a thin red bar: without one it has nothing
        # to click; the hover and the label show the true value
        "marker": {
            "color": [ZERO_COLOR if not r.accuracy else ACCENT for r in rows]
        },
        "x": [r.label for r in rows],
        "y": [max(r.accuracy or 0.0, MIN_BAR) for r in rows],
        "customdata": [r.accuracy for r in rows],
        "text": [f"{r.correct}/{r.support}" for r in rows],
        "textposition": "outside",
        "cliponaxis": False,
        "hovertemplate": "%{x}: %{customdata:.1%} (%{text})<extra></extra>",
    }


def _class_metric_rows(rows: list[analysis.ClassMetrics]) -> list[dict]:
    """The classes with the lowest recall first, at most MAX_PAIR_ROWS."""
    rows = sorted(
        rows, key=lambda m: (m.recall if m.recall is not None else 2, m.label)
    )
    return [
        {
            "label": m.label,
            "precision": _fmt_pct(m.precision),
            "recall": _fmt_pct(m.recall),
            "support": m.support,
        }
        for m in rows[:MAX_PAIR_ROWS]
    ]


def _outcome_traces(right, wrong, edges) -> list[dict]:
    """Two stacked bar traces (correct, wrong) on the same bins."""
    traces = []
    for counts, name, color in (
        (right, "correct", ACCENT),
        (wrong, "wrong", ZERO_COLOR),
    ):
        trace = _histogram_trace(counts, edges)
        trace.update(name=name, marker={"color": color})
        traces.append(trace)
    return traces


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
    # always one "Showing" line: the plots below must not move on a click
    text += f"  \nShowing: {state.showing or 'the panel base view'}"
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


def _thumbnails(filepath, e: analysis.Explanation | None) -> dict:
    """``{"c1": url, ...}``: thumbnails of the listed crops, best first (the
    keys sort in rank order up to 9 crops)."""
    if e is None or not e.crops:
        return {}
    boxes = [c["bounding_box"] for c in e.crops[:MAX_THUMBNAILS]]
    urls = analysis.crop_thumbnails(filepath, boxes)
    return {f"c{i + 1}": url for i, url in enumerate(urls)}


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
