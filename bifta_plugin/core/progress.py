"""Progress events of the generator-shaped long operations.

A run (:func:`~bifta_plugin.sdk.run.iter_bifta`) and a description
generation (:func:`~bifta_plugin.descriptions.generation.iter_generate_descriptions`)
are iterators of :class:`ProgressEvent`: one between each two units of
work, then a final ``"done"`` event carrying the result. The caller decides
what progress means (a progress bar, ``ctx.set_progress``, a message to the
App) and when to stop: closing the iterator (``gen.close()``) cancels the
operation at the next event, cleanly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

#: the phase of the final event, the one that carries the result
DONE = "done"


@dataclass(frozen=True)
class ProgressEvent:
    """Where an operation stands.

    Attributes:
        phase: what is being done ("setup", "classify", "evaluate",
            "generate", ...), or :data:`DONE` for the final event.
        done: units finished in this phase.
        total: units in this phase.
        message: a short human-readable line, e.g. "32/100 samples".
        result: the operation's result; set on the final event only.
    """

    phase: str
    done: int = 0
    total: int = 0
    message: str = ""
    result: Any = None

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (1 for an empty phase)."""
        return min(1.0, self.done / self.total) if self.total else 1.0

    @property
    def is_final(self) -> bool:
        return self.phase == DONE


def drain(events: Iterator[ProgressEvent], progress: Callable | None = None):
    """Run ``events`` to the end; returns the final event's result.

    Args:
        events: a generator of :class:`ProgressEvent`.
        progress: called as ``progress(done, total)`` for every event but
            the final one.

    An exception raised by ``progress`` is thrown into ``events`` at the
    event it came from, so the operation records and cleans up exactly as
    for an error of its own.
    """
    with contextlib.closing(events):
        for event in events:
            if event.is_final:
                return event.result
            if progress is not None:
                try:
                    progress(event.done, event.total)
                except BaseException as e:
                    events.throw(e)
    raise RuntimeError("the operation ended without its final event")
