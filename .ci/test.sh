#!/usr/bin/env bash
# The README's test command: set up (see .ci/setup.sh), then ruff, mypy on engine/ and kernels/,
# and the whole pytest suite (gpu-marked tests skip without CUDA). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .ci/setup.sh

echo "== ruff"
ruff check .
echo "== mypy engine kernels"
mypy engine kernels
echo "== pytest"
pytest -q -ra "$@"
