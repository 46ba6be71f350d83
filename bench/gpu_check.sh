#!/usr/bin/env bash
# The GPU check, one command: GPU-only tests, then the throughput benchmark.
#
#   bash bench/gpu_check.sh [OUT_DIR]            # on a CUDA machine (about 6 min on one H200)
#   bash bench/gpu_check.sh --dry-run [OUT_DIR]  # anywhere: CPU, tiny model (CI runs this)
#
# Installs nothing beyond the project's requirements: it uses the python on
# PATH (PYTHON=... overrides) and, when open_clip is missing there and a
# folder .whl/ of wheels sits in the repository, installs those (offline)
# into a private target dir. Writes OUT_DIR/gpu_tests.log, OUT_DIR/gpu.json
# and prints the table. OUT_DIR defaults to bench/results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT_DIR="${1:-bench/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if ! "$PY" -c "import open_clip" 2>/dev/null; then
    if [[ -d .whl ]]; then
        echo "[gpu_check] installing open_clip from .whl/ into /tmp/bifta-site"
        "$PY" -m pip install -q --no-index --no-deps --target /tmp/bifta-site .whl/*.whl
        export PYTHONPATH="/tmp/bifta-site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "[gpu_check] ERROR: open_clip is not importable with $PY (and no .whl/ folder)" >&2
        exit 1
    fi
fi
"$PY" -c "import torch, open_clip; print('[gpu_check] torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| open_clip', open_clip.__version__)"

if [[ $DRY -eq 1 ]]; then
    echo "[gpu_check] dry run: CPU, tiny model"
    "$PY" bench/gpu_bench.py --dry-run --out "$OUT_DIR/gpu.json"
    exit 0
fi

# GPU-only tests: fp16/bf16 autocast, fast crop mode, exact-vs-fast
# agreement, device memory bound. --noconftest: no MongoDB or FiftyOne needed.
set +e
"$PY" -m pytest tests/test_gpu.py --noconftest -p no:cacheprovider -q -ra 2>&1 | tee "$OUT_DIR/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
set -e
"$PY" bench/gpu_bench.py --out "$OUT_DIR/gpu.json"
echo "[gpu_check] GPU tests exit code $tests_rc"
exit $tests_rc
