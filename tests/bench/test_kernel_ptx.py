"""bench/kernel_ptx.py compiles the paged-attention kernel for sm_90 without a GPU; the
slot-major INT8 value layout must keep reaching the tensor cores through wide copies and
ldmatrix, the reason for the layout (a value mask that varies within a block's slots, for
one, silently brings back byte loads: only a GPU timing would show it)."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_slot_major_int8_values_reach_the_tensor_cores_through_wide_copies() -> None:
    # A subprocess without TRITON_INTERPRET: under the interpreter (tests/conftest.py) the
    # kernels are Python functions and cannot be compiled.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "bench.kernel_ptx", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    slot_major = counts["decode / int8 slot-major values"]
    row_major = counts["decode / int8 row-major values"]
    assert slot_major["mma.sync"] == row_major["mma.sync"] > 0
    # Keys and values both arrive by 16-byte async copies; row-major values do not.
    assert slot_major["cp.async.cg"] == 2 * row_major["cp.async.cg"] > 0
    assert slot_major["ldmatrix"] > row_major["ldmatrix"]
    assert 3 * slot_major["ld.shared"] < row_major["ld.shared"]
