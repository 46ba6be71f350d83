"""Threshold calibration: Wilson intervals, the threshold search, the SDK call.

The math is checked against distributions whose precision is known: scores
``s ~ U(0, 1)`` with ``P(correct | s) = s`` have precision ``(1 + t) / 2``
above a threshold ``t``, so the true precision of any chosen threshold is
known exactly.
"""

import numpy as np
import pytest

from bifta_plugin.core import calibration as cc


def _true_precision(t):
    return (1.0 + t) / 2.0


def _draw(rng, n):
    s = rng.uniform(0.0, 1.0, n)
    return s, rng.uniform(0.0, 1.0, n) < s


# --- Wilson interval ----------------------------------------------------------
@pytest.mark.parametrize("n,p", [(30, 0.9), (100, 0.95), (200, 0.7), (500, 0.97)])
def test_wilson_interval_covers_the_truth_at_the_stated_rate(n, p):
    rng = np.random.default_rng(n)
    draws = 4000
    k = rng.binomial(n, p, size=draws)
    low, high = cc.wilson_interval(k, np.full(draws, n), level=0.95)
    coverage = float(((low <= p) & (p <= high)).mean())
    # binomial noise on 4000 draws is +-0.007; Wilson's own oscillation a bit more
    assert 0.93 <= coverage <= 0.985, coverage


def test_wilson_interval_known_values_and_edges():
    low, high = cc.wilson_interval(8, 10, level=0.95)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert cc.wilson_interval(0, 0) == (0.0, 1.0)
    low, high = cc.wilson_interval(10, 10)
    assert high == 1.0 and 0.69 < low < 0.73
    with pytest.raises(ValueError, match="successes"):
        cc.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="level"):
        cc.wilson_interval(1, 10, level=1.5)


# --- curve and threshold search ---------------------------------------------------
def test_curve_groups_ties_and_counts():
    curve = cc.precision_coverage_curve([0.9, 0.5, 0.9, 0.1], [True, False, False, True])
    assert curve.thresholds.tolist() == [0.9, 0.5, 0.1]
    assert curve.accepted.tolist() == [2, 3, 4]
    assert curve.correct.tolist() == [1, 1, 2]
    assert curve.coverage.tolist() == [0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="NaN"):
        cc.precision_coverage_curve([np.nan], [True])
    with pytest.raises(ValueError, match="differ"):
        cc.precision_coverage_curve([0.1, 0.2], [True])


def test_wilson_rule_reaches_the_target_precision_over_repeated_draws():
    """The chosen threshold's *true* precision reaches the target in the vast
    majority of calibration sets (the search over many thresholds makes the
    miss rate a little higher than the one-sided 2.5% of a single interval)."""
    rng = np.random.default_rng(7)
    target, reps, misses, found, coverages = 0.9, 200, 0, 0, []
    for _ in range(reps):
        curve = cc.precision_coverage_curve(*_draw(rng, 2000))
        i = cc.choose_threshold(curve, target, rule="wilson", min_accepted=10)
        if i is None:
            continue
        found += 1
        misses += _true_precision(curve.thresholds[i]) < target
        coverages.append(curve.coverage[i])
    assert found >= 0.9 * reps
    assert misses / found <= 0.10, misses / found
    # not absurdly conservative: the ideal threshold 0.8 covers 20%
    assert 0.05 < np.mean(coverages) <= 0.2


def test_point_rule_is_optimistic_selection_bias():
    """The point rule picks the lowest threshold whose *observed* precision
    passes: its true precision is below target about half the time."""
    rng = np.random.default_rng(11)
    target, reps = 0.9, 200
    true = []
    for _ in range(reps):
        curve = cc.precision_coverage_curve(*_draw(rng, 2000))
        i = cc.choose_threshold(curve, target, rule="point", min_accepted=10)
        true.append(_true_precision(curve.thresholds[i]))
    true = np.array(true)
    assert abs(true.mean() - target) < 0.01  # centred on the target ...
    assert (true < target).mean() > 0.3  # ... so it misses often


def test_choose_threshold_rejects_bad_arguments_and_small_support():
    curve = cc.precision_coverage_curve([0.99, 0.98, 0.2], [True, True, False])
    assert cc.choose_threshold(curve, 0.9, rule="point", min_accepted=3) is None
    assert cc.choose_threshold(curve, 0.9, rule="point", min_accepted=2) == 1
    with pytest.raises(ValueError, match="rule"):
        cc.choose_threshold(curve, 0.9, rule="best")
    with pytest.raises(ValueError, match="target"):
        cc.choose_threshold(curve, 0.0)


# --- SDK: calibrate on a dataset --------------------------------------------------
def calibration_dataset(fo_dataset, n=600, seed=3, unlabelled=0):
    """Classes a (calibrated: P(correct|s)=s), b (never right), c (always).

    Returns the dataset; ``unlabelled`` extra samples have predictions only.
    """
    import fiftyone as fo

    rng = np.random.default_rng(seed)
    ds = fo_dataset()
    samples = []
    for i in range(n + unlabelled):
        cls = "abc"[i % 3]
        s = float(rng.uniform(0.05, 1.0))
        right = {"a": rng.uniform() < s, "b": False, "c": True}[cls]
        truth = cls if right else ("b" if cls != "b" else "a")
        sample = fo.Sample(
            filepath=f"/nonexistent/img{i:04d}.jpg",
            pred=fo.Classification(label=cls, confidence=s, margin=s / 2),
        )
        if i < n:
            sample["gt"] = fo.Classification(label=truth)
        samples.append(sample)
    ds.add_samples(samples)
    return ds


@pytest.mark.fiftyone
def test_calibrate_per_class_and_global(fo_dataset):
    from bifta_plugin.sdk import calibration as bc

    ds = calibration_dataset(fo_dataset, n=900, unlabelled=30)
    cal = bc.calibrate(ds, "pred", "gt", target=0.8, min_accepted=10)
    assert cal.num_samples == 900
    a, b, c = cal.classes["a"], cal.classes["b"], cal.classes["c"]
    assert b.threshold is None and b.accepted == 0  # never right: no threshold
    labels, confs = ds.exists("gt").values(["pred.label", "pred.confidence"])
    assert c.threshold == min(s for lab, s in zip(labels, confs) if lab == "c")
    assert c.coverage == 1.0 and c.precision == 1.0
    assert a.reached and a.precision_ci[0] >= 0.8 and 0.0 < a.coverage < 0.5
    assert a.support == 300 and 0 <= a.coverage_ci[0] <= a.coverage <= a.coverage_ci[1]
    # the pooled estimate under the per-class thresholds: a's and c's accepted
    pooled = cal.estimate("per_class")
    assert pooled.accepted == a.accepted + c.accepted
    assert pooled.correct == a.correct + c.correct
    assert cal.thresholds("global")["global"] == cal.overall.threshold
    table = cal.table()
    assert "all (per-class)" in table and "95% Wilson" in table
    md = cal.markdown_table().splitlines()
    assert len(md) == 2 + 3 + 2 and md[-1].startswith("| **all (per-class)** | - | 900 |")
    data, layout = bc.curve_plot(cal)
    assert len(data[2]["x"]) == len(cal.curves["all"]["coverage"]) <= bc.MAX_CURVE_POINTS
    assert cal.figure().data  # a plotly figure
    # JSON round trip through a saved run
    bc.save_calibration(ds, "cal", cal)
    assert bc.list_calibrations(ds) == ["cal"]
    again = bc.load_calibration(ds, "cal")
    assert again.classes["a"] == a and again.per_class_overall == pooled


@pytest.mark.fiftyone
def test_calibrate_margin_and_bad_input(fo_dataset):
    from bifta_plugin.sdk import calibration as bc

    ds = calibration_dataset(fo_dataset, n=90)
    cal = bc.calibrate(ds, "pred", "gt", score="margin", target=0.9, rule="point")
    assert cal.score == "margin" and cal.classes["c"].threshold < 0.5
    with pytest.raises(ValueError, match="does not exist"):
        bc.calibrate(ds, "pred", "nope")
    with pytest.raises(ValueError, match="unknown score"):
        bc.calibrate(ds, "pred", "gt", score="entropy")
    with pytest.raises(ValueError, match="must differ"):
        bc.calibrate(ds, "pred", "pred")
    with pytest.raises(ValueError, match="not a saved calibration"):
        bc.load_calibration(ds, "missing")


@pytest.mark.fiftyone
def test_cli_calibrate_prints_the_table_saves_and_plots(fo_dataset, capsys, tmp_path):
    from bifta_plugin.cli.commands import main
    from bifta_plugin.sdk import calibration as bc

    ds = calibration_dataset(fo_dataset, n=300)
    html = tmp_path / "curve.html"
    code = main(
        ["calibrate", "--dataset", ds.name, "--pred-field", "pred", "--gt-field", "gt",
         "--target", "0.8", "--save", "cli_cal", "--plot", str(html)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    expected = bc.calibrate(ds, "pred", "gt", target=0.8)
    assert expected.table() in out
    assert "300 labelled samples, target precision 80.0%" in out
    assert bc.load_calibration(ds, "cli_cal").classes == expected.classes
    assert "plotly" in html.read_text()[:5000].lower()
    assert main(["calibrate", "--dataset", ds.name, "--pred-field", "pred", "--gt-field", "nope"]) == 2
    assert "does not exist" in capsys.readouterr().err
