#!/usr/bin/env bash
# Creates .venv (Python 3.11 by default; PYTHON=python3.12 for the jax 0.12 line) and installs dcls-jax into it,
# with the test and PyTorch-reference extras when asked: bash scripts/setup_env.sh [--with-tests]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
EXTRAS=""
if [ "${1:-}" = "--with-tests" ]; then
  EXTRAS="test"
  if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    # torch first, pinned to the local CPU wheel: an unpinned torch would resolve to a CUDA build of several GB.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    EXTRAS="test,torch"
  fi  # Python 3.12: only CUDA torch builds resolve there; the live-reference tests skip themselves.
fi
"$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
