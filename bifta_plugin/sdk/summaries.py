"""Run records read for people: a short run summary, the run list and a
time estimate for the next run.

Pure functions of the info dicts of :mod:`.records` (a
:class:`~.records.RunRecords` snapshot): no database reads here, so the
operators' forms and the panels can call them on every event. The time
estimate is never invented: it comes from the throughput
(``results.images_per_s``) an earlier run of the same model and method
recorded on this dataset, or there is none and the message says so.
"""

from __future__ import annotations

import dataclasses
import datetime


def format_duration(seconds: float | None) -> str:
    """``"45 s"``, ``"3 min"``, ``"1 h 20 min"``; ``"n/a"`` for None."""
    if seconds is None:
        return "n/a"
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{max(round(seconds), 1)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def format_date(timestamp: str | None) -> str:
    """An ISO 8601 timestamp as ``"2025-01-01 12:30 UTC"`` (minutes)."""
    if not timestamp:
        return "n/a"
    try:
        when = datetime.datetime.fromisoformat(str(timestamp))
    except ValueError:
        return str(timestamp)
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _model(info: dict) -> str:
    name = info.get("model_name") or "n/a"
    pretrained = info.get("pretrained")
    return f"{name} ({pretrained})" if pretrained else name


def _samples(results: dict) -> str:
    total = results.get("num_samples")
    if total is None:
        return "n/a"
    parts = [f"{total}"]
    details = [
        f"{results[key]} {word}"
        for key, word in (
            ("num_processed", "classified"),
            ("num_skipped", "skipped"),
            ("num_failed", "failed"),
        )
        if results.get(key)
    ]
    return parts[0] + (f" ({', '.join(details)})" if details else "")


def run_summary_rows(info: dict) -> list[tuple[str, str]]:
    """The few facts of a run a person asks for, as ``(label, value)`` rows.

    Args:
        info: a run's info dict (:func:`~.records.get_bifta_run_info`).

    Returns:
        rows for: run, status, method, model, classes, samples, accuracy,
        date, duration, throughput, fields written.
    """
    results = info.get("results") or {}
    classes = info.get("classes") or []
    shown = ", ".join(classes[:8]) + (" ..." if len(classes) > 8 else "")
    accuracy = results.get("accuracy")
    if accuracy is not None and info.get("gt_field"):
        accuracy_text = f"{_pct(accuracy)} vs `{info['gt_field']}`"
    else:
        accuracy_text = _pct(accuracy)
    rate = results.get("images_per_s")
    fields = info.get("fields") or {}
    return [
        ("Run", f"`{info.get('key')}`"),
        ("Status", str(info.get("status") or "n/a") + (" (stale)" if info.get("stale") else "")),
        ("Method", str(info.get("method") or "n/a")),
        ("Model", _model(info)),
        ("Classes", f"{len(classes)}: {shown}" if classes else "n/a"),
        ("Samples", _samples(results)),
        ("Accuracy", accuracy_text),
        ("Date", format_date(info.get("timestamp"))),
        ("Duration", format_duration(results.get("elapsed_s"))),
        (
            "Throughput",
            f"{rate:.3g} images/s on {results.get('device') or info.get('device') or 'n/a'}"
            if rate
            else "n/a",
        ),
        ("Fields written", ", ".join(f"`{f}`" for f in fields.values()) or "n/a"),
    ]


def run_summary_markdown(info: dict) -> str:
    """:func:`run_summary_rows` as a two-column markdown table."""
    lines = ["| | |", "|---|---|"]
    for label, value in run_summary_rows(info):
        lines.append(f"| **{label}** | {value.replace('|', '/')} |")
    return "\n".join(lines)


def run_list_rows(infos: list[dict]) -> list[dict]:
    """One row per run, newest first: key, date, model, method, accuracy,
    samples, status, label field (what a run list shows and switches to).

    Args:
        infos: run info dicts, oldest first (:meth:`~.records.RunRecords.infos`).
    """
    rows = []
    for info in reversed(infos):
        results = info.get("results") or {}
        rows.append(
            {
                "key": info.get("key"),
                "date": format_date(info.get("timestamp")),
                "model": info.get("model_name") or "n/a",
                "method": info.get("method") or "n/a",
                "accuracy": _pct(results.get("accuracy")),
                "samples": results.get("num_samples", "n/a"),
                "status": info.get("status") or "n/a",
                "label_field": info.get("label_field"),
                "gt_field": info.get("gt_field"),
            }
        )
    return rows


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What a run would do, before it starts.

    Attributes:
        num_todo: samples to classify.
        num_done: samples skipped as already done (``skip_existing``).
        seconds: estimated classification time, None without a basis.
        basis: the key of the run whose throughput was used, or None.
        message: one sentence for the form.
    """

    num_todo: int
    num_done: int
    seconds: float | None
    basis: str | None
    message: str


def throughput_basis(
    infos: list[dict], model_name: str, method: str, device: str | None = None
) -> dict | None:
    """The newest run of ``model_name`` with ``method`` that recorded a
    throughput (``results.images_per_s`` > 0 over at least one image), on
    ``device`` when one is named (``None`` or ``"auto"``: any device).

    Args:
        infos: run info dicts, oldest first.
    """
    for info in reversed(infos):
        results = info.get("results") or {}
        if info.get("model_name") != model_name or info.get("method") != method:
            continue
        done = (results.get("num_processed") or 0) + (results.get("num_failed") or 0)
        if not results.get("images_per_s") or done < 1:
            continue
        ran_on = str(results.get("device") or info.get("device") or "")
        if device not in (None, "", "auto") and not ran_on.startswith(str(device)):
            continue
        return info
    return None


def estimate_run(
    infos: list[dict],
    *,
    num_todo: int,
    num_done: int,
    model_name: str,
    method: str,
    device: str | None = None,
) -> Estimate:
    """How many samples a run classifies and, when an earlier run of the
    same model and method on this dataset recorded its throughput, about
    how long that takes (model loading not included).

    Args:
        infos: the dataset's run info dicts, oldest first.
        num_todo: samples the run would classify.
        num_done: samples it would skip (already done).
        model_name, method, device: the run's settings.
    """
    counts = f"{num_todo} samples to classify"
    if num_done:
        counts += f" ({num_done} already done, skipped)"
    if num_todo == 0:
        return Estimate(0, num_done, 0.0, None, counts + ": nothing to do")
    basis = throughput_basis(infos, model_name, method, device)
    if basis is None:
        where = "" if device in (None, "", "auto") else f" on {device}"
        return Estimate(
            num_todo,
            num_done,
            None,
            None,
            f"{counts}; no time estimate: no earlier {method} run of "
            f"{model_name}{where} on this dataset recorded its throughput",
        )
    results = basis["results"]
    rate = float(results["images_per_s"])
    seconds = num_todo / rate
    ran_on = results.get("device") or basis.get("device") or "its device"
    return Estimate(
        num_todo,
        num_done,
        seconds,
        basis["key"],
        f"{counts}; about {format_duration(seconds)} on {ran_on} "
        f"(plus model loading), from the last run of this model on this "
        f"dataset ('{basis['key']}': {rate:.3g} images/s)",
    )
