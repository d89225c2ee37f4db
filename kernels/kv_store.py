"""Writing new keys and values into the paged KV cache, optionally quantized to INT8.

Cache layout (one layer; slot = block_id * block_size + offset):

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]   model dtype or int8
    k_scale, v_scale: [num_blocks, block_size, num_kv_heads]             fp32, INT8 caches only

Those are the index orders; in memory an INT8 value cache is slot-major ("slot-major" below:
[num_blocks, num_kv_heads, head_dim, block_size], head_dim's stride is block_size), every other
cache row-major (head_dim contiguous). Attention multiplies probabilities by values with the
slots as the reduced dimension; Hopper's tensor cores take 8-bit operands only with that
dimension contiguous (ldmatrix has no 8-bit transpose), so row-major INT8 values reached them
through narrow shared-memory loads. `allocate_kv_cache` makes caches in this layout; the
kernels take either through strides.

Scales are head-major in memory ([num_blocks, num_kv_heads, block_size], `allocate_kv_scales`):
an attention program reads one head's scales, and row-major ([..., block_size, num_kv_heads])
would spread a block's 16 of them over 16 separate 32-byte sectors, each fetched for 4 bytes.

INT8 is symmetric per token and per head: scale = max|x| / 127 (never below a tiny positive
floor, so an all-zero row gets a positive scale and no NaN) and code = round(x / scale).
"""

import torch
import triton
import triton.language as tl

INT8_SCALE_FLOOR = 1e-8


def quantize_int8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the last dim of x. x: [..., head_dim] -> (codes int8 [..., head_dim], scale fp32 [...])."""
    x_fp32 = x.float()
    scale = x_fp32.abs().amax(dim=-1).clamp_min(INT8_SCALE_FLOOR * 127.0) / 127.0
    codes = torch.round(x_fp32 / scale.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def slot_major_values(dtype: torch.dtype, block_size: int) -> bool:
    """Whether allocate_kv_cache lays this value cache out slot-major: INT8, with blocks of a
    power of two from 16 to 32 slots (a block's slots are then whole 16-byte vectors, and every
    attention tile, 32 keys or more, starts at a block boundary)."""
    return dtype == torch.int8 and block_size in (16, 32)


def allocate_kv_cache(
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed (k_cache, v_cache) for one layer, both indexed [num_blocks, block_size,
    num_kv_heads, head_dim]; the value cache slot-major where slot_major_values says so."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.zeros(shape, dtype=dtype, device=device)
    if slot_major_values(dtype, block_size):
        v_cache = torch.zeros(
            (num_blocks, num_kv_heads, head_dim, block_size), dtype=dtype, device=device
        ).permute(0, 3, 1, 2)
    else:
        v_cache = torch.zeros(shape, dtype=dtype, device=device)
    return k_cache, v_cache


def allocate_kv_scales(
    num_blocks: int, block_size: int, num_kv_heads: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_scale, v_scale) for one INT8 layer, indexed [num_blocks, block_size, num_kv_heads] and
    head-major in memory (a head's scales for a block are contiguous). Filled with ones, so a
    slot never written dequantizes to finite values."""
    shape = (num_blocks, num_kv_heads, block_size)
    k_scale = torch.ones(shape, dtype=torch.float32, device=device).permute(0, 2, 1)
    v_scale = torch.ones(shape, dtype=torch.float32, device=device).permute(0, 2, 1)
    return k_scale, v_scale


def to_head_major_scales(scale: torch.Tensor) -> torch.Tensor:
    """A head-major copy of a [num_blocks, block_size, num_kv_heads] scale tensor, indexed the
    same way (the layout allocate_kv_scales makes)."""
    return scale.permute(0, 2, 1).contiguous().permute(0, 2, 1)


def to_slot_major(cache: torch.Tensor) -> torch.Tensor:
    """A slot-major copy of a [num_blocks, block_size, num_kv_heads, head_dim] cache, indexed
    the same way."""
    return cache.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def check_cache_layout(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Assert the layouts the kernels read: keys row-major; values row-major, or slot-major
    with blocks as slot_major_values allows."""
    assert k_cache.shape == v_cache.shape, "key and value caches must have the same shape"
    assert k_cache.stride(-1) == 1, "key cache rows must be dense"
    if is_slot_major(v_cache):
        assert v_cache.stride(1) == 1 and slot_major_values(v_cache.dtype, v_cache.shape[1]), (
            "value cache must be row-major or slot-major (kernels/kv_store.py)"
        )


def is_slot_major(v_cache: torch.Tensor) -> bool:
    """Whether a value cache that passed check_cache_layout is slot-major."""
    return v_cache.stride(-1) != 1


def gather_kv_ref(
    cache: torch.Tensor,
    scale: torch.Tensor | None,
    block_table: torch.Tensor,
    context_len: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Return one sequence's first context_len cached rows, dequantized to dtype.

    cache: [num_blocks, block_size, num_kv_heads, head_dim] -> [context_len, num_kv_heads, head_dim]
    """
    block_size = cache.shape[1]
    num_blocks = -(-context_len // block_size)
    blocks = block_table[:num_blocks].long()
    rows = cache[blocks].flatten(0, 1)[:context_len]
    if scale is None:
        return rows.to(dtype)
    row_scale = scale[blocks].flatten(0, 1)[:context_len]
    return (rows.float() * row_scale.unsqueeze(-1)).to(dtype)


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


@triton.jit
def _round_half_to_even(x):
    """torch.round for |x| < 2**22 (the interpreter has no libdevice rint; a float->int cast
    would truncate toward zero)."""
    rounded = tl.floor(x + 0.5)
    is_odd = (rounded - 2.0 * tl.floor(rounded * 0.5)) != 0.0
    return tl.where(((rounded - x) == 0.5) & is_odd, rounded - 1.0, rounded)


@triton.jit
def _store_rows(
    x_ptr,  # [num_tokens, num_kv_heads, head_dim]
    cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    scale_ptr,  # [num_blocks, block_size, num_kv_heads] fp32 (QUANTIZE only)
    token,
    block_id,
    offset,
    num_kv_heads,
    head_dim,
    stride_x_token,
    stride_x_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    stride_cache_dim,
    stride_scale_block,
    stride_scale_slot,
    stride_scale_head,
    QUANTIZE: tl.constexpr,
    SCALE_FLOOR: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_HEADS)  # [BLOCK_HEADS]
    dims = tl.arange(0, BLOCK_DIM)  # [BLOCK_DIM]
    head_mask = heads < num_kv_heads
    mask = head_mask[:, None] & (dims < head_dim)[None, :]
    x_offsets = token * stride_x_token + heads[:, None] * stride_x_head + dims[None, :]
    slot_base = block_id * stride_cache_block + offset * stride_cache_slot
    cache_offsets = (
        slot_base + heads[:, None] * stride_cache_head + dims[None, :] * stride_cache_dim
    )
    x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0)
    if QUANTIZE:
        x = x.to(tl.float32)
        # Symmetric per token and head: scale = max|x| / 127, floored so zero rows stay finite.
        scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(x), axis=1), SCALE_FLOOR * 127.0), 127.0)
        codes = _round_half_to_even(tl.math.div_rn(x, scale[:, None]))
        codes = tl.minimum(tl.maximum(codes, -127.0), 127.0)
        tl.store(cache_ptr + cache_offsets, codes.to(tl.int8), mask=mask)
        scale_offsets = (
            block_id * stride_scale_block + offset * stride_scale_slot + heads * stride_scale_head
        )
        tl.store(scale_ptr + scale_offsets, scale, mask=head_mask)
    else:
        tl.store(cache_ptr + cache_offsets, x.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, head_dim]
    value_ptr,  # [num_tokens, num_kv_heads, head_dim]
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    k_scale_ptr,  # [num_blocks, block_size, num_kv_heads] fp32 (QUANTIZE only)
    v_scale_ptr,  # [num_blocks, block_size, num_kv_heads] fp32 (QUANTIZE only)
    slot_mapping_ptr,  # [num_tokens]
    block_size,
    num_kv_heads,
    head_dim,
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_k_cache_block,
    stride_k_cache_slot,
    stride_k_cache_head,
    stride_k_cache_dim,
    stride_v_cache_block,
    stride_v_cache_slot,
    stride_v_cache_head,
    stride_v_cache_dim,
    stride_k_scale_block,
    stride_k_scale_slot,
    stride_k_scale_head,
    stride_v_scale_block,
    stride_v_scale_slot,
    stride_v_scale_head,
    QUANTIZE: tl.constexpr,
    SCALE_FLOOR: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # padding token
        return
    block_id = slot // block_size
    offset = slot % block_size
    _store_rows(
        key_ptr,
        k_cache_ptr,
        k_scale_ptr,
        token,
        block_id,
        offset,
        num_kv_heads,
        head_dim,
        stride_key_token,
        stride_key_head,
        stride_k_cache_block,
        stride_k_cache_slot,
        stride_k_cache_head,
        stride_k_cache_dim,
        stride_k_scale_block,
        stride_k_scale_slot,
        stride_k_scale_head,
        QUANTIZE,
        SCALE_FLOOR,
        BLOCK_HEADS,
        BLOCK_DIM,
    )
    _store_rows(
        value_ptr,
        v_cache_ptr,
        v_scale_ptr,
        token,
        block_id,
        offset,
        num_kv_heads,
        head_dim,
        stride_value_token,
        stride_value_head,
        stride_v_cache_block,
        stride_v_cache_slot,
        stride_v_cache_head,
        stride_v_cache_dim,
        stride_v_scale_block,
        stride_v_scale_slot,
        stride_v_scale_head,
        QUANTIZE,
        SCALE_FLOOR,
        BLOCK_HEADS,
        BLOCK_DIM,
    )


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Triton version of store_kv_ref (same contract; mutates the caches, and the scales for an
    INT8 cache, quantizing on write). One program per token writes all of its KV heads."""
    num_tokens, num_kv_heads, head_dim = key.shape
    assert value.shape == key.shape, "key and value must have the same shape"
    assert k_cache.shape[2:] == (num_kv_heads, head_dim)
    check_cache_layout(k_cache, v_cache)
    quantize = k_cache.dtype == torch.int8
    if quantize:
        assert v_cache.dtype == torch.int8, "both caches must be INT8"
        assert k_scale is not None and v_scale is not None, "INT8 cache needs scale tensors"
        assert k_scale.shape == k_cache.shape[:3] and v_scale.shape == v_cache.shape[:3]
        assert k_scale.dtype == torch.float32 and v_scale.dtype == torch.float32
    else:
        # Unused by the kernel; any tensor gives it a pointer and strides.
        k_scale = v_scale = k_cache
    key = key if key.stride(-1) == 1 else key.contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        key,
        value,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        slot_mapping,
        k_cache.shape[1],
        num_kv_heads,
        head_dim,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        k_cache.stride(3),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        v_cache.stride(3),
        k_scale.stride(0),
        k_scale.stride(1),
        k_scale.stride(2),
        v_scale.stride(0),
        v_scale.stride(1),
        v_scale.stride(2),
        QUANTIZE=quantize,
        SCALE_FLOOR=INT8_SCALE_FLOOR,
        BLOCK_HEADS=triton.next_power_of_2(num_kv_heads),
        BLOCK_DIM=triton.next_power_of_2(head_dim),
    )
