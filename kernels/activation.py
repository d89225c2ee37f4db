"""SiLU-and-mul: the gated MLP activation of the Llama family."""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Return silu(gate) * up for x = [gate | up].

    x: [num_tokens, 2 * intermediate_size] -> [num_tokens, intermediate_size]
    """
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [num_tokens, 2 * intermediate_size]
    out_ptr,  # [num_tokens, intermediate_size] contiguous
    intermediate_size,
    stride_x_token,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < intermediate_size
    gate_ptr = x_ptr + token * stride_x_token
    gate = tl.load(gate_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptr + intermediate_size + cols, mask=mask, other=0.0).to(tl.float32)
    # Round silu(gate) to the input dtype before the product, as the two torch ops do.
    silu = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
    out = silu * up
    tl.store(
        out_ptr + token * intermediate_size + cols, out.to(out_ptr.dtype.element_ty), mask=mask
    )


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Triton version of silu_and_mul_ref (same contract); any leading dims."""
    intermediate_size = x.shape[-1] // 2
    assert x.shape[-1] == 2 * intermediate_size, "last dim must be even"
    out = torch.empty((*x.shape[:-1], intermediate_size), dtype=x.dtype, device=x.device)
    rows = x.reshape(-1, x.shape[-1])
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    if rows.shape[0] == 0 or intermediate_size == 0:
        return out
    block = min(1024, triton.next_power_of_2(intermediate_size))
    grid = (rows.shape[0], triton.cdiv(intermediate_size, block))
    _silu_and_mul_kernel[grid](rows, out, intermediate_size, rows.stride(0), BLOCK=block)
    return out
