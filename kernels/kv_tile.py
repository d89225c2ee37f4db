"""One step of flash-style attention over the paged KV cache, shared by the paged attention and
shared-prefix kernels: load the keys at positions `keys` through a block table, score them
against the query tile, and fold them into the running online softmax (max_score,
denominator) and accumulator. Scores are in base 2 (qk_scale includes log2(e)); `visible`
masks what each query row may see.

Over an INT8 cache the query rows are quantized too (`quantize_query_rows`, per token and
head, as the cache quantizes keys), so Q K^T is an int8 x int8 -> int32 product on the tensor
cores and the key codes need no conversion; query and key scales multiply the scores. P V
takes the value codes as they are (exact in 16 bits) with the value scales on the
probabilities."""

import triton
import triton.language as tl

from kernels.kv_store import INT8_SCALE_FLOOR, round_half_to_even

_SCALE_FLOOR = tl.constexpr(INT8_SCALE_FLOOR)


@triton.jit
def quantize_query_rows(q):
    """Symmetric INT8 codes of each row of q [BLOCK_M, HEAD_DIM] and their fp32 scales
    [BLOCK_M]: the rule of kernels/kv_store.py's quantize_int8_ref."""
    q = q.to(tl.float32)
    scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(q), axis=1), _SCALE_FLOOR * 127.0), 127.0)
    codes = round_half_to_even(tl.math.div_rn(q, scale[:, None]))
    codes = tl.minimum(tl.maximum(codes, -127.0), 127.0)
    return codes.to(tl.int8), scale


@triton.jit
def attend_kv_tile(
    q,  # [BLOCK_M, HEAD_DIM] in DOT_DTYPE; int8 codes over an INT8 cache (IS_INT8)
    q_scale,  # [BLOCK_M] fp32 scales of the codes (IS_INT8 only)
    acc,  # [BLOCK_M, HEAD_DIM] fp32
    max_score,  # [BLOCK_M] fp32
    denominator,  # [BLOCK_M] fp32
    keys,  # [BLOCK_N] positions in the sequence
    key_mask,  # [BLOCK_N] positions that exist: keys < kv_end
    kv_end,
    visible,  # [BLOCK_M, BLOCK_N] (or broadcastable): what each row may attend to
    block_table_ptr,  # the sequence's row of the block table
    k_head_ptr,  # k_cache_ptr offset to this KV head
    v_head_ptr,
    k_scale_ptr,  # [num_blocks, BLOCK_SIZE, num_kv_heads] fp32 (IS_INT8 only)
    v_scale_ptr,
    kv_head,
    dims,  # [HEAD_DIM]
    qk_scale,
    stride_k_cache_block,
    stride_k_cache_slot,
    stride_k_cache_dim,
    stride_v_cache_block,
    stride_v_cache_slot,
    stride_v_cache_dim,
    stride_k_scale_block,
    stride_k_scale_slot,
    stride_k_scale_head,
    stride_v_scale_block,
    stride_v_scale_slot,
    stride_v_scale_head,
    BLOCK_SIZE: tl.constexpr,
    V_SLOT_MAJOR: tl.constexpr,
    IS_INT8: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    if V_SLOT_MAJOR:
        # Values are read by whole blocks (see below): every key of a block the sequence holds
        # needs the block's id.
        block_held = (keys // BLOCK_SIZE) * BLOCK_SIZE < kv_end
    else:
        block_held = key_mask
    block_ids = tl.load(block_table_ptr + keys // BLOCK_SIZE, mask=block_held, other=0)
    block_ids = block_ids.to(tl.int64)
    slots_in_block = keys % BLOCK_SIZE
    k_rows = block_ids * stride_k_cache_block + slots_in_block * stride_k_cache_slot
    k = tl.load(
        k_head_ptr + k_rows[:, None] + dims[None, :] * stride_k_cache_dim,
        mask=key_mask[:, None],
        other=0,
    )
    # [BLOCK_M, BLOCK_N] fp32 logits in base 2; the softmax scale is applied after the dot
    # rather than folded into q.
    if IS_INT8:
        scores = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)  # exact
        k_scale_offsets = (
            block_ids * stride_k_scale_block
            + slots_in_block * stride_k_scale_slot
            + kv_head * stride_k_scale_head
        )
        k_scale = tl.load(k_scale_ptr + k_scale_offsets, mask=key_mask, other=0.0)
        scores = scores * (q_scale * qk_scale)[:, None] * k_scale[None, :]
    else:
        scores = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
        scores = scores * qk_scale
    scores = tl.where(visible, scores, float("-inf"))

    new_max = tl.maximum(max_score, tl.max(scores, axis=1))
    # A row that has seen nothing yet (padding rows, masked heads) keeps -inf; shift it by 0
    # instead so exp2 gives 0, not NaN.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    probs = tl.exp2(scores - shift[:, None])  # [BLOCK_M, BLOCK_N]
    correction = tl.exp2(max_score - shift)  # [BLOCK_M]
    denominator = denominator * correction + tl.sum(probs, axis=1)

    v_rows = block_ids * stride_v_cache_block + slots_in_block * stride_v_cache_slot
    if V_SLOT_MAJOR:
        # A value cache whose slots are contiguous (kernels/kv_store.py): tiles start at whole
        # blocks, so a block's slots are BLOCK_SIZE consecutive bytes (the compiler cannot see
        # through the block table load), and whole held blocks are read, slots past kv_end too
        # (their weights are 0 and codes are finite), so the mask is constant over each run and
        # the loads are vectors that reach the tensor cores through ldmatrix.
        RUN: tl.constexpr = min(BLOCK_SIZE, keys.shape[0])
        v_rows = tl.max_contiguous(tl.multiple_of(v_rows, RUN), RUN)
        v_mask = block_held
    else:
        v_mask = key_mask
    v_offsets = v_rows[:, None] + dims[None, :] * stride_v_cache_dim
    v = tl.load(v_head_ptr + v_offsets, mask=v_mask[:, None], other=0)
    if IS_INT8:
        v_scale_offsets = (
            block_ids * stride_v_scale_block
            + slots_in_block * stride_v_scale_slot
            + kv_head * stride_v_scale_head
        )
        v_scale = tl.load(v_scale_ptr + v_scale_offsets, mask=key_mask, other=0.0)
        # sum_n p_n (s_n c_n) = sum_n (p_n s_n) c_n: the scales go on the probabilities
        # ([BLOCK_M, BLOCK_N] products) rather than on the codes ([BLOCK_N, HEAD_DIM]); the
        # codes are exact in DOT_DTYPE.
        weights = probs * v_scale[None, :]
    else:
        weights = probs
    acc = acc * correction[:, None] + tl.dot(
        weights.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=DOT_PRECISION
    )
    return acc, new_max, denominator
