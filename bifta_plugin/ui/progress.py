"""Progress events (:class:`~bifta_plugin.core.progress.ProgressEvent`) ->
the App's progress bar.

The long operations are iterators of events, so an operator needs no
thread: an immediate (generator) ``execute`` yields one
``ctx.trigger("set_progress", ...)`` per event it forwards, and FiftyOne
streams them to the App; a delegated ``execute`` calls ``ctx.set_progress``
the same way. When the App's client goes away, FiftyOne stops iterating the
operator's generator and it is closed, which closes the operation's
iterator at its next event: the operation is cancelled cleanly.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from ..core.progress import ProgressEvent

#: phases shown on the progress bar (others are too short to be worth it)
SHOWN_PHASES = ("setup", "generate", "classify")


def throttled(events: Iterator[ProgressEvent], min_interval: float) -> Iterator[ProgressEvent]:
    """The events worth showing: the final one, the first and last of each
    shown phase, and in between at most one per ``min_interval`` seconds.

    Closing this closes ``events``.
    """
    last_phase, last_time = None, float("-inf")
    with contextlib.closing(events):
        for event in events:
            if event.is_final:
                yield event
                continue
            if event.phase not in SHOWN_PHASES:
                continue
            now = time.monotonic()
            if (
                event.phase != last_phase
                or event.done >= event.total
                or now - last_time >= min_interval
            ):
                last_phase, last_time = event.phase, now
                yield event


def progress_params(event: ProgressEvent) -> dict:
    """``set_progress`` parameters of an event."""
    return dict(progress=event.fraction, label=event.message)


def report_to_ctx(ctx, events: Iterator[ProgressEvent], min_interval: float = 5.0):
    """Run ``events`` to the end with ``ctx.set_progress`` (delegated runs;
    a no-op for immediate ones); returns the final event's result."""
    with contextlib.closing(throttled(events, min_interval)) as shown:
        for event in shown:
            if event.is_final:
                return event.result
            ctx.set_progress(**progress_params(event))
    raise RuntimeError("the operation ended without its final event")
