#!/usr/bin/env bash
# Creates .venv (Python 3.11 by default; PYTHON=python3.12 for the jax 0.12 line), installs dcls-jax with its
# test and PyTorch-reference extras, and runs the whole test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned to the local CPU wheel: an unpinned torch would resolve to a CUDA build of several GB.
if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  EXTRAS="test,torch"
else
  EXTRAS="test"  # Python 3.12: only CUDA torch builds resolve; the reference tests skip themselves.
fi
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
exec "$VENV/bin/python" -m pytest -n 2 -q "$@"
