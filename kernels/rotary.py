"""Rotary position embedding (the "rotate half" / NeoX layout used by Hugging Face Llama)."""

import torch


def rotate_half_ref(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query and key by their token positions; returns new tensors.

    query: [num_tokens, num_heads, head_dim]; key: [num_tokens, num_kv_heads, head_dim]
    positions: [num_tokens] int; cos_sin_cache: [max_positions, head_dim] fp32 holding
    cos(pos * inv_freq) in the first head_dim/2 columns and sin(...) in the rest.
    The rotation is computed in fp32 and cast back to the input dtype.
    """
    half = cos_sin_cache.shape[-1] // 2
    cos_sin = cos_sin_cache[positions]  # [num_tokens, head_dim]
    cos = torch.cat((cos_sin[:, :half], cos_sin[:, :half]), dim=-1).unsqueeze(1)
    sin = torch.cat((cos_sin[:, half:], cos_sin[:, half:]), dim=-1).unsqueeze(1)
    q = query.float()
    k = key.float()
    q_out = q * cos + rotate_half_ref(q) * sin
    k_out = k * cos + rotate_half_ref(k) * sin
    return q_out.to(query.dtype), k_out.to(key.dtype)
