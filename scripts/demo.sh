#!/usr/bin/env bash
# Install the environment (idempotent) and run the BiFTA demo:
# real photos shipped with scikit-image -> FiftyOne dataset "bifta-demo" ->
# BiFTA with ViT-B-32 (OpenAI weights) -> evaluation -> a summary table.
#
#   bash scripts/demo.sh                      # the full demo
#   bash scripts/demo.sh --pretrained none    # random weights (offline; plumbing only)
#   bash scripts/demo.sh --method wca --device cuda
#   BIFTA_SKIP_INSTALL=1 bash scripts/demo.sh # skip the install step
#
# Extra arguments go to `python -m bifta_plugin demo` (see --help). Offline,
# the weights cannot be downloaded: the demo says so loudly and runs with
# random weights; export HF_HUB_OFFLINE=1 to skip the download retries.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BIFTA_VENV:-$REPO_ROOT/.venv}"
cd "$REPO_ROOT"

if [[ "${BIFTA_SKIP_INSTALL:-0}" != "1" ]]; then
    bash "$REPO_ROOT/scripts/install.sh" --runtime-only
fi
exec "$VENV/bin/python" -m bifta_plugin demo "$@"
