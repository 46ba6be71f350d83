#!/usr/bin/env bash
# Install (idempotent, see scripts/install.sh) and run the test suite.
#
#   bash scripts/test.sh                  # whole suite
#   bash scripts/test.sh -m "not slow"    # extra args go to pytest
#   bash scripts/test.sh tests/test_environment.py   # a path replaces the default `tests`
#   BIFTA_SKIP_INSTALL=1 bash scripts/test.sh -k env   # skip the install step
#
# Exit status: pytest's, except that "no tests collected" (pytest exit 5) is an
# error too: CI must never pass with an empty run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BIFTA_VENV:-$REPO_ROOT/.venv}"
cd "$REPO_ROOT"

if [[ "${BIFTA_SKIP_INSTALL:-0}" != "1" ]]; then
    bash "$REPO_ROOT/scripts/install.sh"
fi
[[ -x "$VENV/bin/python" ]] || { echo "[test] ERROR: no venv at $VENV (run scripts/install.sh)" >&2; exit 1; }

# tests/conftest.py sets these too (plus the isolated DB / plugins / cache dirs);
# exporting them here also covers subprocesses started outside pytest.
export HF_HUB_OFFLINE=1
export FIFTYONE_DO_NOT_TRACK=true
export FIFTYONE_DATABASE_VALIDATION=false

# Default test path `tests`, unless a path (or path::test id) is passed.
paths=(tests)
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then paths=(); break; fi
done

echo "[test] $VENV/bin/python -m pytest ${paths[*]} -q -ra $*"
start=$SECONDS
set +e
"$VENV/bin/python" -m pytest "${paths[@]}" -q -ra "$@"
rc=$?
set -e
echo "[test] pytest exit code $rc ($((SECONDS - start)) s)"

if [[ $rc -eq 5 ]]; then
    echo "[test] ERROR: pytest collected no tests (exit 5); treating this as a failure" >&2
fi
exit $rc
