"""DataLoader worker life cycle: workers never outlive the process that
started them, and a worker that cannot start is an error, not a hang.

- :func:`die_with_parent` (called in each worker at start-up): on Linux the
  kernel SIGKILLs the worker when its parent dies (``PR_SET_PDEATHSIG``),
  ``kill -9`` included; elsewhere a daemon thread polls the parent pid.
- :func:`safe_num_workers`: under the ``spawn``/``forkserver`` start
  methods a worker re-imports the worker-side module by its name; the
  pipeline hands workers ``bifta_plugin.engine.prepare`` (importable
  whatever name FiftyOne's plugin registry gave the package), and falls
  back to 0 workers (decoding in the calling process) only if that name
  cannot be imported.
- :data:`WORKER_TIMEOUT_S`: the DataLoader's ``timeout``, the longest wait
  for one batch from the workers, so a worker stuck at start-up raises.
"""

from __future__ import annotations

import importlib.machinery
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

#: seconds the main process waits for one batch from the workers before
#: raising (``BIFTA_WORKER_TIMEOUT_S`` overrides; 0 waits forever)
WORKER_TIMEOUT_S = float(os.environ.get("BIFTA_WORKER_TIMEOUT_S", "120"))

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process exit when ``parent_pid`` (the process that asked
    for it) dies.

    Forked and spawned workers are children of ``parent_pid``; under
    ``forkserver`` they are children of the fork server, so the pid is
    polled instead.
    """
    if os.getppid() == parent_pid and sys.platform.startswith("linux") and _set_pdeathsig():
        if os.getppid() != parent_pid:  # the parent died before prctl
            os._exit(1)
        return
    if not _alive(parent_pid):
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _set_pdeathsig() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except Exception:  # no libc prctl: fall back on polling
        return False


def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    direct = os.getppid() == parent_pid
    while (os.getppid() == parent_pid) if direct else _alive(parent_pid):
        time.sleep(interval_s)
    os._exit(1)


def start_method() -> str:
    """The start method new worker processes get ("fork", "spawn", ...)."""
    # the first of get_all_start_methods() is the default; asking
    # get_start_method() without allow_none would fix it for the process
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def importable_by_name(module_name: str) -> bool:
    """Whether a fresh interpreter (a spawned worker) can import
    ``module_name`` from ``sys.path``; looks at the files, not
    ``sys.modules``."""
    parts = module_name.split(".")
    path = None
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), path)
        if spec is None:
            return False
        path = spec.submodule_search_locations
    return True


def safe_num_workers(requested: int, module_name: str, context: str | None = None) -> int:
    """``requested`` workers, or 0 where they could not start: under a
    start method that re-imports ``module_name`` (``context``, or the
    process default) when it is not importable by that name."""
    method = context or start_method()
    if requested == 0 or method == "fork" or importable_by_name(module_name):
        return requested
    logger.info(
        "decoding in the main process: DataLoader workers start with %r and "
        "could not import %s", method, module_name,
    )
    return 0


# glibc: large blocks go to mmap from this size up (its default start value)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024
_heap_capped = False


def cap_heap_growth() -> bool:
    """Keep large buffers (decoded images, uint8 views, float chunks) on
    their own mappings, returned to the system when freed (glibc only).

    glibc raises its mmap threshold each time a large mmapped block is
    freed, up to 32 MB; after that the multi-MB buffers of every image land
    on the heap, which fragments and keeps the process's peak RSS growing
    with the run (measured here: +200 to +600 MB, varying run to run, for
    buffers of which ~50 MB are alive). Setting the threshold explicitly,
    to glibc's own default start value, turns that adjustment off. Called
    in DataLoader workers and once in the process that runs the encoder;
    ``BIFTA_CAP_HEAP=0`` leaves malloc as it is. Returns whether it is set.
    """
    global _heap_capped
    if _heap_capped:
        return True
    if os.environ.get("BIFTA_CAP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = getattr(libc, "mallopt", None)  # absent on musl
        _heap_capped = bool(mallopt and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)
    except OSError:
        _heap_capped = False
    return _heap_capped
