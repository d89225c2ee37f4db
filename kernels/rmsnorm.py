"""RMSNorm, alone and fused with the residual add that precedes it."""

import torch


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
