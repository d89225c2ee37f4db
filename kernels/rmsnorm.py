"""RMSNorm, alone and fused with the residual add that precedes it."""

import torch
import triton
import triton.language as tl


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalize the last dim of x by its root mean square (in fp32), then scale by weight.

    x: [num_tokens, hidden_size]; weight: [hidden_size]. Returns a new tensor of x's dtype.
    The fp32 upcast and the order (normalize, cast back, then scale) follow the Llama reference.
    """
    x_fp32 = x.float()
    variance = x_fp32.pow(2).mean(-1, keepdim=True)
    normed = (x_fp32 * torch.rsqrt(variance + eps)).to(x.dtype)
    return weight * normed


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rms_norm(x + residual), x + residual). Inputs are not mutated."""
    summed = x + residual
    return rms_norm_ref(summed, weight, eps), summed


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """View x as [num_tokens, num_heads, hidden] (num_heads = 1 for 2-D input) with a unit
    last-dim stride, copying only when the leading dims cannot be viewed that way."""
    if x.dim() == 2:
        x = x.unsqueeze(1)
    elif x.dim() > 3:
        x = x.reshape(-1, x.shape[-2], x.shape[-1])
    assert x.dim() == 3, "rms_norm expects [num_tokens, hidden] or [..., heads, head_dim]"
    return x if x.stride(-1) == 1 else x.contiguous()


@triton.jit(do_not_specialize=["num_rows"])  # one compiled variant for every step size
def _rms_norm_kernel(
    x_ptr,  # [num_tokens, num_heads, hidden_size]
    residual_ptr,  # [num_tokens, num_heads, hidden_size] (HAS_RESIDUAL only)
    weight_ptr,  # [hidden_size]
    out_ptr,  # [num_rows, hidden_size] contiguous, num_rows = num_tokens * num_heads
    summed_ptr,  # [num_rows, hidden_size] contiguous (HAS_RESIDUAL only)
    num_rows,
    num_heads,
    hidden_size,
    eps,
    stride_x_token,
    stride_x_head,
    stride_residual_token,
    stride_residual_head,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_HIDDEN: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # [BLOCK_ROWS]
    cols = tl.arange(0, BLOCK_HIDDEN)  # [BLOCK_HIDDEN]
    row_mask = rows < num_rows
    mask = row_mask[:, None] & (cols < hidden_size)[None, :]
    token = (rows // num_heads).to(tl.int64)
    head = rows % num_heads
    x_offsets = (token * stride_x_token + head * stride_x_head)[:, None] + cols[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * hidden_size + cols[None, :]
    x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual_offsets = (token * stride_residual_token + head * stride_residual_head)[
            :, None
        ] + cols[None, :]
        residual = tl.load(residual_ptr + residual_offsets, mask=mask, other=0.0)
        # Round the sum to its storage dtype before normalizing, as the reference does.
        summed = (x + residual.to(tl.float32)).to(summed_ptr.dtype.element_ty)
        tl.store(summed_ptr + out_offsets, summed, mask=mask)
        x = summed.to(tl.float32)
        normed_dtype = summed_ptr.dtype.element_ty
    else:
        normed_dtype = x_ptr.dtype.element_ty
    variance = tl.sum(x * x, axis=1) / hidden_size  # [BLOCK_ROWS]
    rstd = 1.0 / tl.sqrt(variance + eps)
    # Cast back to the input dtype before scaling by weight (Llama reference order).
    normed = (x * rstd[:, None]).to(normed_dtype).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=cols < hidden_size, other=0.0).to(tl.float32)
    out = weight[None, :] * normed
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden_size = x.shape[-1]
    assert weight.shape == (hidden_size,), "weight must be [hidden_size]"
    rows_x = _as_rows(x)
    normed_dtype = x.dtype
    summed: torch.Tensor | None = None
    rows_residual = rows_x
    if residual is not None:
        assert residual.shape == x.shape, "residual must have x's shape"
        rows_residual = _as_rows(residual)
        normed_dtype = torch.promote_types(x.dtype, residual.dtype)
        summed = torch.empty(x.shape, dtype=normed_dtype, device=x.device)
    out = torch.empty(
        x.shape, dtype=torch.promote_types(weight.dtype, normed_dtype), device=x.device
    )
    num_tokens, num_heads, _ = rows_x.shape
    num_rows = num_tokens * num_heads
    if num_rows == 0:
        return out, summed
    block_hidden = triton.next_power_of_2(hidden_size)
    # Short rows (q/k norm over head_dim) share a program so each one moves a few KB.
    block_rows = max(1, min(16, 2048 // block_hidden))
    grid = (triton.cdiv(num_rows, block_rows),)
    _rms_norm_kernel[grid](
        rows_x,
        rows_residual,
        weight,
        out,
        out if summed is None else summed,
        num_rows,
        num_heads,
        hidden_size,
        eps,
        rows_x.stride(0),
        rows_x.stride(1),
        rows_residual.stride(0),
        rows_residual.stride(1),
        HAS_RESIDUAL=residual is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_HIDDEN=block_hidden,
        num_warps=4 if block_hidden * block_rows <= 2048 else 8,
    )
    return out, summed


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton version of rms_norm_ref (same contract). x: [..., hidden_size], any leading dims."""
    out, _ = _launch_rms_norm(x, None, weight, eps)
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of fused_add_rms_norm_ref: (rms_norm(x + residual), x + residual) in one
    pass over memory. Inputs are not mutated."""
    out, summed = _launch_rms_norm(x, residual, weight, eps)
    assert summed is not None
    return out, summed
