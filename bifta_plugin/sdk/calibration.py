"""Calibrating pre-label thresholds on a labelled subset of a collection.

:func:`calibrate` reads a prediction field (``fo.Classification`` with
``confidence`` and the ``margin`` attribute, as a BiFTA run writes it) and a
ground-truth field on the samples that have both, and chooses, globally and
per predicted class, the lowest threshold on the chosen score whose
precision reaches the target (the rule is documented in
:func:`bifta_plugin.core.calibration.choose_threshold`). A class's precision
is that of the samples *predicted* as the class: the quality of the
pre-labels it would receive.

The result (:class:`Calibration`) is JSON-serialisable and can be saved on
the dataset as a FiftyOne run (``run_type="bifta_calibration"``), which the
pre-label step and the App load by key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..core import calibration as cc

RUN_TYPE = "bifta_calibration"
SCORES = ("confidence", "margin")
MODES = ("per_class", "global")
#: points kept per curve in the saved calibration (plots)
MAX_CURVE_POINTS = 200


@dataclass
class ThresholdReport:
    """The chosen threshold of one group (all samples, or one class)."""

    threshold: float | None
    support: int  # calibration samples in the group
    accepted: int
    correct: int
    precision: float | None
    precision_ci: tuple[float, float] | None
    coverage: float
    coverage_ci: tuple[float, float]

    @property
    def reached(self) -> bool:
        return self.threshold is not None


@dataclass
class Calibration:
    """Thresholds, their estimates and the curves, for one prediction field."""

    pred_field: str
    gt_field: str
    score: str
    target: float
    rule: str
    level: float
    min_accepted: int
    num_samples: int
    overall: ThresholdReport
    classes: dict[str, ThresholdReport]
    #: the whole calibration set under the per-class thresholds
    per_class_overall: ThresholdReport
    curves: dict = field(default_factory=dict)

    def thresholds(self, mode: str = "per_class") -> dict:
        """``{"mode", "global": t | None, "classes": {class: t | None}}``."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        return {
            "mode": mode,
            "global": self.overall.threshold,
            "classes": {c: r.threshold for c, r in self.classes.items()},
        }

    def estimate(self, mode: str = "per_class") -> ThresholdReport:
        """Precision/coverage of the calibration set under ``mode``'s thresholds."""
        return self.per_class_overall if mode == "per_class" else self.overall

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        d = dict(d)
        for key in ("overall", "per_class_overall"):
            d[key] = _report(d[key])
        d["classes"] = {c: _report(r) for c, r in d["classes"].items()}
        return cls(**d)

    def table(self) -> str:
        """A fixed-width text table: one row per class, then all samples."""
        head = f"{'class':<24} {'threshold':>9} {'n':>5} {'accepted':>8} {'coverage':>8} {'precision':>9}  {int(self.level * 100)}% Wilson"
        rows = [head, "-" * len(head)]
        for name, r in sorted(self.classes.items()):
            rows.append(_row(name, r))
        rows.append("-" * len(head))
        rows.append(_row("all (one threshold)", self.overall))
        rows.append(_row("all (per-class)", self.per_class_overall))
        return "\n".join(rows)

    def markdown_table(self) -> str:
        """:meth:`table` as a Markdown table (panels)."""
        pct = int(self.level * 100)
        rows = [
            f"| class | threshold | n | accepted | coverage | precision | {pct}% Wilson |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        groups = sorted(self.classes.items()) + [
            ("**all (one threshold)**", self.overall),
            ("**all (per-class)**", self.per_class_overall),
        ]
        for name, r in groups:
            rows.append("| " + " | ".join([name.replace("|", "\\|")] + _cells(r)) + " |")
        return "\n".join(rows)

    def figure(self):
        """The precision-coverage curve as a ``plotly.graph_objects.Figure``."""
        import plotly.graph_objects as go

        data, layout = curve_plot(self)
        return go.Figure(data=data, layout=layout)


def calibrate(
    samples,
    pred_field: str,
    gt_field: str,
    *,
    target: float = 0.95,
    score: str = "confidence",
    rule: str = "wilson",
    level: float = 0.95,
    min_accepted: int = 10,
) -> Calibration:
    """Choose pre-label thresholds on the samples with both fields.

    Args:
        samples: a FiftyOne collection (only samples with a prediction and a
            ground-truth label are used).
        pred_field: the ``fo.Classification`` prediction field.
        gt_field: the ``fo.Classification`` ground-truth field.
        target: the precision to reach, in (0, 1].
        score: ``"confidence"`` (top-1 probability) or ``"margin"`` (top-1
            minus top-2 probability).
        rule: ``"wilson"`` (lower bound reaches the target) or ``"point"``.
        level: confidence level of the Wilson intervals.
        min_accepted: a threshold must accept at least this many calibration
            samples (of its class, for a class threshold).

    Raises:
        ValueError: unknown score/rule, missing fields, or no sample with both.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")
    _check_label_field(samples, pred_field, "prediction")
    _check_label_field(samples, gt_field, "ground-truth")
    if pred_field == gt_field:
        raise ValueError("the prediction and ground-truth fields must differ")
    view = samples.exists(pred_field).exists(gt_field)
    pred, values, truth = view.values(
        [f"{pred_field}.label", f"{pred_field}.{score}", f"{gt_field}.label"]
    )
    if not pred:
        raise ValueError(
            f"no sample has both {pred_field!r} and {gt_field!r}: label some "
            "samples first"
        )
    if any(v is None for v in values):
        raise ValueError(f"some {pred_field!r} labels have no {score!r}")
    pred = np.asarray(pred, dtype=object)
    values = np.asarray(values, dtype=float)
    correct = pred == np.asarray(truth, dtype=object)
    args = dict(target=target, rule=rule, level=level, min_accepted=min_accepted)
    overall, curve = _group_report(values, correct, **args)
    classes, class_curves = {}, {}
    for name in sorted(set(pred.tolist())):
        mask = pred == name
        classes[name], class_curves[name] = _group_report(values[mask], correct[mask], **args)
    return Calibration(
        pred_field=pred_field,
        gt_field=gt_field,
        score=score,
        target=float(target),
        rule=rule,
        level=float(level),
        min_accepted=int(min_accepted),
        num_samples=len(pred),
        overall=overall,
        classes=classes,
        per_class_overall=_pooled(pred, values, correct, classes, level),
        curves={"all": curve, "classes": class_curves},
    )


def _group_report(values, correct, *, target, rule, level, min_accepted):
    curve = cc.precision_coverage_curve(values, correct, level=level)
    i = cc.choose_threshold(curve, target, rule=rule, min_accepted=min_accepted)
    n = curve.total
    if i is None:
        report = ThresholdReport(None, n, 0, 0, None, None, 0.0, cc.wilson_interval(0, n, level))
    else:
        k, c = int(curve.accepted[i]), int(curve.correct[i])
        report = ThresholdReport(
            threshold=float(curve.thresholds[i]),
            support=n,
            accepted=k,
            correct=c,
            precision=c / k,
            precision_ci=cc.wilson_interval(c, k, level),
            coverage=k / n,
            coverage_ci=cc.wilson_interval(k, n, level),
        )
    return report, _curve_points(curve)


def _pooled(pred, values, correct, classes, level) -> ThresholdReport:
    """All samples under the per-class thresholds (a class without one abstains)."""
    t = np.array([_or_inf(classes[p].threshold) for p in pred])
    accepted = values >= t
    k, c, n = int(accepted.sum()), int((accepted & correct).sum()), len(pred)
    return ThresholdReport(
        threshold=None,
        support=n,
        accepted=k,
        correct=c,
        precision=c / k if k else None,
        precision_ci=cc.wilson_interval(c, k, level) if k else None,
        coverage=k / n,
        coverage_ci=cc.wilson_interval(k, n, level),
    )


def _curve_points(curve: cc.Curve) -> dict:
    idx = cc.subsample(len(curve.thresholds), MAX_CURVE_POINTS)
    low, high = curve.interval()
    return {
        "threshold": curve.thresholds[idx].tolist(),
        "coverage": curve.coverage[idx].tolist(),
        "precision": curve.precision[idx].tolist(),
        "low": np.asarray(low)[idx].tolist(),
        "high": np.asarray(high)[idx].tolist(),
    }


def curve_plot(cal: Calibration) -> tuple[list, dict]:
    """Plotly ``(data, layout)`` as plain dicts (for panels and figures).

    The overall curve with its Wilson band, the target line, and one marker
    per class at its chosen threshold.
    """
    curve = cal.curves["all"]
    cov = curve["coverage"]
    pct = int(round(cal.level * 100))
    data = [
        {"type": "scatter", "x": cov, "y": curve["high"], "mode": "lines",
         "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip"},
        {"type": "scatter", "x": cov, "y": curve["low"], "mode": "lines",
         "line": {"width": 0}, "fill": "tonexty", "fillcolor": "rgba(255,109,4,0.2)",
         "name": f"{pct}% Wilson interval", "hoverinfo": "skip"},
        {"type": "scatter", "x": cov, "y": curve["precision"], "mode": "lines",
         "line": {"color": "#ff6d04"}, "name": "all classes",
         "customdata": curve["threshold"],
         "hovertemplate": f"{cal.score} >= %{{customdata:.3f}}<br>coverage %{{x:.1%}}<br>precision %{{y:.1%}}<extra></extra>"},
        {"type": "scatter", "x": [0, 1], "y": [cal.target, cal.target], "mode": "lines",
         "line": {"dash": "dash", "color": "#888"}, "name": f"target {cal.target:.0%}"},
    ]  # fmt: skip
    reached = [(c, r) for c, r in cal.classes.items() if r.reached]
    if reached:
        data.append(
            {"type": "scatter", "mode": "markers", "name": "class thresholds (coverage within the class)",
             "x": [r.coverage for _, r in reached], "y": [r.precision for _, r in reached],
             "text": [f"{c}: {cal.score} >= {r.threshold:.3f}" for c, r in reached],
             "hovertemplate": "%{text}<br>coverage %{x:.1%}<br>precision %{y:.1%}<extra></extra>"}
        )  # fmt: skip
    layout = {
        "title": {"text": f"Precision vs coverage ({cal.score}, {cal.num_samples} labelled samples)"},
        "xaxis": {"title": {"text": "coverage (fraction auto-accepted)"}, "range": [0, 1]},
        "yaxis": {"title": {"text": "precision"}, "range": [0, 1.02]},
        "legend": {"orientation": "h", "y": -0.25},
        "margin": {"t": 40, "b": 40},
    }
    return data, layout


def save_calibration(samples, key: str, cal: Calibration, overwrite: bool = True) -> None:
    """Store ``cal`` on the dataset as a FiftyOne run ``key``."""
    import datetime

    dataset = samples._root_dataset
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
    config = dataset.init_run(run_type=RUN_TYPE, calibration=cal.to_dict(), timestamp=stamp)
    dataset.register_run(key, config, overwrite=overwrite)


def load_calibration(samples, key: str) -> Calibration:
    """The :class:`Calibration` saved under ``key``."""
    dataset = samples._root_dataset
    if key not in list_calibrations(dataset):
        raise ValueError(
            f"{key!r} is not a saved calibration; saved: {list_calibrations(dataset) or 'none'}"
        )
    config = dataset.get_run_info(key).config
    return Calibration.from_dict(_plain(config.serialize()["calibration"]))


def list_calibrations(samples) -> list[str]:
    """The keys of the calibrations saved on the dataset, oldest first."""
    dataset = samples._root_dataset
    stamped = []
    for key in dataset.list_runs():
        try:
            config = dataset.get_run_info(key).config
        except Exception:  # another tool's run that does not load here
            continue
        if getattr(config, "run_type", None) == RUN_TYPE:
            stamped.append((str(getattr(config, "timestamp", "") or ""), key))
    return [key for _, key in sorted(stamped)]


def _check_label_field(samples, name: str, role: str) -> None:
    import fiftyone.core.labels as fol

    f = samples.get_field(name)
    if f is None:
        raise ValueError(f"the {role} field {name!r} does not exist")
    if getattr(f, "document_type", None) is not fol.Classification:
        raise ValueError(f"the {role} field {name!r} is not a fo.Classification field")


def _report(d: dict) -> ThresholdReport:
    d = dict(d)
    for key in ("precision_ci", "coverage_ci"):
        if d[key] is not None:
            d[key] = tuple(d[key])
    return ThresholdReport(**d)


def _or_inf(t):
    return np.inf if t is None else t


def _cells(r: ThresholdReport) -> list:
    """threshold, n, accepted, coverage, precision, interval: as text."""
    t = "-" if r.threshold is None else f"{r.threshold:.4f}"
    p = "-" if r.precision is None else f"{r.precision:.1%}"
    ci = "-" if r.precision_ci is None else f"[{r.precision_ci[0]:.1%}, {r.precision_ci[1]:.1%}]"
    return [t, str(r.support), str(r.accepted), f"{r.coverage:.1%}", p, ci]


def _row(name: str, r: ThresholdReport) -> str:
    t, n, k, cov, p, ci = _cells(r)
    return f"{name[:24]:<24} {t:>9} {n:>5} {k:>8} {cov:>8} {p:>9}  {ci}"


def _plain(obj):
    import json

    return json.loads(json.dumps(obj, default=_default))


def _default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
