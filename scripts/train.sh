#!/usr/bin/env bash
# Creates .venv if needed, installs dcls-jax, runs the main job. Usage: bash scripts/demo.sh [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${VENV:-.venv}/bin/python" -m train.demo "$@"
