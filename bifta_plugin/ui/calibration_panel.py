"""The calibration panel: the precision-coverage curve of a saved calibration.

It only renders: the curve, its Wilson band and the chosen class thresholds
come from :func:`bifta_plugin.sdk.calibration.curve_plot`, the table from
:meth:`~bifta_plugin.sdk.calibration.Calibration.table`; calibrations are
made by the ``calibrate_prelabel`` operator (or the SDK / CLI).
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ._common import ICON

KEY = "calibration_key"
PLOT_CONFIG = {"displayModeBar": False, "scrollZoom": False}


class CalibrationPanel(foo.Panel):
    """Precision vs coverage of the pre-label thresholds."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="bifta_calibration",
            label="BiFTA calibration",
            icon=ICON,
            surfaces="grid",
            help_markdown=(
                "Precision vs coverage of a saved pre-label calibration, with "
                "its Wilson interval band and the chosen per-class thresholds."
            ),
        )

    def on_load(self, ctx):
        from ..sdk import calibration as bc

        keys = bc.list_calibrations(ctx.dataset)
        key = ctx.panel.state.get(KEY)
        if key not in keys:
            key = keys[-1] if keys else None
        ctx.panel.state.set({"keys": keys, KEY: key})
        self._show(ctx, key)

    def on_change_key(self, ctx):
        ctx.panel.state.set(KEY, ctx.params.get("value"))
        self._show(ctx, ctx.params.get("value"))

    def _show(self, ctx, key):
        from ..sdk import calibration as bc

        if key is None:
            ctx.panel.state.set({"table": None, "layout": None, "headline": None})
            return
        cal = bc.load_calibration(ctx.dataset, key)
        data, layout = bc.curve_plot(cal)
        ctx.panel.state.set(
            {"table": cal.markdown_table(), "layout": layout, "headline": _headline(cal)}
        )
        ctx.panel.data.set({"curve": data})

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        keys = state.get("keys") or []
        if not keys:
            panel.md(
                "No calibration yet: run **BiFTA: calibrate pre-label thresholds** "
                "(or `python -m bifta_plugin calibrate`).",
                name="empty",
            )
            return types.Property(panel, view=types.GridView())
        choices = types.Dropdown(label="Calibration")
        for key in keys:
            choices.add_choice(key, label=key)
        panel.enum(
            KEY, choices.values(), label="Calibration", default=state.get(KEY),
            view=choices, on_change=self.on_change_key,
        )  # fmt: skip
        panel.md(state.get("headline") or "", name="headline")
        panel.plot("curve", layout=state.get("layout") or {}, config=PLOT_CONFIG, height="480px")
        panel.md(state.get("table") or "", name="table")
        panel.md(
            "The band is the Wilson interval of each threshold's precision: "
            "over repeated labelled subsets it contains that threshold's true "
            "precision at the stated rate. The chosen threshold is the lowest "
            "one that passes, so its own estimate is slightly optimistic "
            "(selection bias): prefer the Wilson rule, or check on held-out labels.",
            name="note",
        )
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))


def _headline(cal) -> str:
    r = cal.per_class_overall
    if r.precision is None:
        est = "no sample would be auto-accepted"
    else:
        lo, hi = r.precision_ci
        est = (
            f"per-class thresholds accept **{r.coverage:.1%}** at **{r.precision:.1%}** "
            f"precision [{lo:.1%}, {hi:.1%}]"
        )
    return (
        f"**{cal.pred_field}** vs **{cal.gt_field}**, {cal.num_samples:,} labelled samples, "
        f"target {cal.target:.0%} ({cal.rule} rule, {cal.score}): {est}"
    )
