#!/usr/bin/env bash
# Start N FiftyOne delegated-operation workers on this machine, one per GPU.
#
#   bash scripts/launch_workers.sh N            # workers 0..N-1, worker i sees GPU i only
#   CPU_ONLY=1 bash scripts/launch_workers.sh N # no GPUs: N CPU workers
#
# Each worker is `fiftyone delegated launch` with CUDA_VISIBLE_DEVICES=i, so a
# run with device="auto" uses that worker's GPU (cuda:0 inside the worker).
# Every worker must reach the same database as the process that queues the
# runs: export FIFTYONE_DATABASE_URI (and FIFTYONE_PLUGINS_DIR, where this
# plugin is installed) before calling this script. Logs go to
# $BIFTA_WORKER_LOGS (default ./bifta-workers/worker-<host>-<i>.log); the pids
# are written to <logs>/pids. Stop them with: kill $(cat <logs>/pids)
#
# Environment:
#   FIFTYONE_BIN          the fiftyone executable (default: .venv/bin/fiftyone, then PATH)
#   THREADS_PER_WORKER    torch/OpenMP threads of each worker (default: cores / N)
#   BIFTA_WORKER_LOGS     the log folder
set -euo pipefail

N="${1:?usage: launch_workers.sh N (number of workers, one per GPU)}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "N must be a positive integer; got '$N'" >&2; exit 2; }
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIFTYONE_BIN="${FIFTYONE_BIN:-$REPO_ROOT/.venv/bin/fiftyone}"
[[ -x "$FIFTYONE_BIN" ]] || FIFTYONE_BIN="$(command -v fiftyone || true)"
[[ -n "$FIFTYONE_BIN" ]] || { echo "no fiftyone executable: set FIFTYONE_BIN" >&2; exit 2; }
[[ -n "${FIFTYONE_DATABASE_URI:-}" ]] || echo "warning: FIFTYONE_DATABASE_URI is not set:" \
    "each worker uses this machine's own database" >&2
LOGS="${BIFTA_WORKER_LOGS:-$PWD/bifta-workers}"
mkdir -p "$LOGS"
CORES="$(nproc)"
THREADS="${THREADS_PER_WORKER:-$(( CORES / N > 0 ? CORES / N : 1 ))}"
HOST="$(hostname)"

: > "$LOGS/pids"
for (( i = 0; i < N; i++ )); do
    if [[ "${CPU_ONLY:-0}" == "1" ]]; then gpu=""; else gpu="$i"; fi
    CUDA_VISIBLE_DEVICES="$gpu" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" \
        nohup "$FIFTYONE_BIN" delegated launch > "$LOGS/worker-$HOST-$i.log" 2>&1 &
    echo $! >> "$LOGS/pids"
    echo "worker $i: pid $!, CUDA_VISIBLE_DEVICES='$gpu', $THREADS threads, log $LOGS/worker-$HOST-$i.log"
done
