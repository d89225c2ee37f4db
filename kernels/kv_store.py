"""Writing new keys and values into the paged KV cache, optionally quantized to INT8.

Cache layout (one layer; slot = block_id * block_size + offset):

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]   model dtype or int8
    k_scale, v_scale: [num_blocks, block_size, num_kv_heads]             fp32, INT8 caches only

INT8 is symmetric per token and per head: scale = max|x| / 127 (never below a tiny positive
floor, so an all-zero row gets a positive scale and no NaN) and code = round(x / scale).
"""

import torch

INT8_SCALE_FLOOR = 1e-8


def quantize_int8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the last dim of x. x: [..., head_dim] -> (codes int8 [..., head_dim], scale fp32 [...])."""
    x_fp32 = x.float()
    scale = x_fp32.abs().amax(dim=-1).clamp_min(INT8_SCALE_FLOOR * 127.0) / 127.0
    codes = torch.round(x_fp32 / scale.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def store_kv_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Write key/value rows into their slots; mutates the caches (and scales for INT8).

    key, value: [num_tokens, num_kv_heads, head_dim]; slot_mapping: [num_tokens] int, where a
    negative slot marks a padding token that is not written.
    """
    block_size = k_cache.shape[1]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    block_ids = slots // block_size
    offsets = slots % block_size
    key, value = key[valid], value[valid]
    if k_cache.dtype == torch.int8:
        assert k_scale is not None and v_scale is not None, "INT8 cache needs scale tensors"
        k_codes, k_s = quantize_int8_ref(key)
        v_codes, v_s = quantize_int8_ref(value)
        k_cache[block_ids, offsets] = k_codes
        v_cache[block_ids, offsets] = v_codes
        k_scale[block_ids, offsets] = k_s
        v_scale[block_ids, offsets] = v_s
    else:
        k_cache[block_ids, offsets] = key.to(k_cache.dtype)
        v_cache[block_ids, offsets] = value.to(v_cache.dtype)
