#!/usr/bin/env bash
# The prepared CUDA check (benchmarks/gpu_check.py): run it on any machine with a GPU, from the repository
# root with nnkd installed (`make setup` or `pip install -e ".[dev]"`). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
exec "$PY" benchmarks/gpu_check.py "$@"
