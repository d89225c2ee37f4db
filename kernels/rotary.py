"""Rotary position embedding (the "rotate half" / NeoX layout used by Hugging Face Llama)."""

import torch
import triton
import triton.language as tl


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


@triton.jit
def _rotate_heads(
    x_ptr,  # [num_tokens, num_heads, head_dim]
    out_ptr,  # [num_tokens, num_heads, head_dim] contiguous
    token,
    cos,  # [1, BLOCK_HALF] fp32
    sin,  # [1, BLOCK_HALF] fp32
    num_heads,
    half_dim,
    stride_x_token,
    stride_x_head,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_HEADS)  # [BLOCK_HEADS]
    cols = tl.arange(0, BLOCK_HALF)  # [BLOCK_HALF]
    mask = (heads < num_heads)[:, None] & (cols < half_dim)[None, :]
    x_offsets = token * stride_x_token + heads[:, None] * stride_x_head + cols[None, :]
    out_offsets = (token * num_heads + heads[:, None]) * (2 * half_dim) + cols[None, :]
    # NeoX layout: the first half rotates with the second, x = [x1 | x2].
    x1 = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_offsets + half_dim, mask=mask, other=0.0).to(tl.float32)
    out1 = x1 * cos - x2 * sin
    out2 = x2 * cos + x1 * sin
    out_dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + out_offsets, out1.to(out_dtype), mask=mask)
    tl.store(out_ptr + out_offsets + half_dim, out2.to(out_dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim]
    key_ptr,  # [num_tokens, num_kv_heads, head_dim]
    positions_ptr,  # [num_tokens]
    cos_sin_cache_ptr,  # [max_positions, head_dim] fp32: cos | sin
    query_out_ptr,  # [num_tokens, num_heads, head_dim] contiguous
    key_out_ptr,  # [num_tokens, num_kv_heads, head_dim] contiguous
    num_heads,
    num_kv_heads,
    half_dim,
    stride_query_token,
    stride_query_head,
    stride_key_token,
    stride_key_head,
    stride_cache_position,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_KV_HEADS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)  # [BLOCK_HALF]
    cache_row = cos_sin_cache_ptr + position * stride_cache_position
    cos = tl.load(cache_row + cols, mask=cols < half_dim, other=0.0)[None, :]
    sin = tl.load(cache_row + half_dim + cols, mask=cols < half_dim, other=0.0)[None, :]
    _rotate_heads(
        query_ptr,
        query_out_ptr,
        token,
        cos,
        sin,
        num_heads,
        half_dim,
        stride_query_token,
        stride_query_head,
        BLOCK_HEADS,
        BLOCK_HALF,
    )
    _rotate_heads(
        key_ptr,
        key_out_ptr,
        token,
        cos,
        sin,
        num_kv_heads,
        half_dim,
        stride_key_token,
        stride_key_head,
        BLOCK_KV_HEADS,
        BLOCK_HALF,
    )


def apply_rotary(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of apply_rotary_ref (same contract): one program per token rotates all
    of its query and key heads; returns new contiguous tensors."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    assert key.shape == (num_tokens, num_kv_heads, head_dim), "key must be [tokens, kv_heads, dim]"
    assert cos_sin_cache.shape[-1] == head_dim and head_dim % 2 == 0
    assert cos_sin_cache.dtype == torch.float32, "cos_sin_cache must be fp32"
    query = query if query.stride(-1) == 1 else query.contiguous()
    key = key if key.stride(-1) == 1 else key.contiguous()
    cos_sin_cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    key_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    if num_tokens == 0:
        return query_out, key_out
    half_dim = head_dim // 2
    block_heads = triton.next_power_of_2(num_heads)
    block_half = triton.next_power_of_2(half_dim)
    _rotary_kernel[(num_tokens,)](
        query,
        key,
        positions,
        cos_sin_cache,
        query_out,
        key_out,
        num_heads,
        num_kv_heads,
        half_dim,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        cos_sin_cache.stride(0),
        BLOCK_HEADS=block_heads,
        BLOCK_KV_HEADS=triton.next_power_of_2(num_kv_heads),
        BLOCK_HALF=block_half,
        num_warps=4 if block_heads * block_half <= 2048 else 8,
    )
    return query_out, key_out
