#!/usr/bin/env bash
# Creates .venv, installs dcls-jax with its test and PyTorch-reference extras, runs the whole test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --with-tests
exec "${VENV:-.venv}/bin/python" -m pytest -n 2 -q "$@"
