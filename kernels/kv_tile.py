"""One step of flash-style attention, shared by the paged attention and shared-prefix kernels:
load BLOCK_N keys and values, score them against the query tile, and fold them into the
running online softmax (max_score, denominator) and accumulator. Scores are in base 2
(qk_scale includes log2(e)); `visible` masks what each query row may see.

attend_kv_tile reads the paged cache through a block table (an INT8 cache's codes go into the
dots as they are; key scales multiply the scores and value scales the probabilities);
attend_fresh_tile reads rows of the step's own, unquantized keys and values."""

import triton
import triton.language as tl


@triton.jit
def softmax_step(
    scores,  # [BLOCK_M, BLOCK_N] fp32 logits in base 2
    visible,
    max_score,  # [BLOCK_M] the running maximum
    denominator,  # [BLOCK_M] the running sum of exp2(score - max_score)
):
    """Unnormalised probabilities of a tile, the factor that rescales what was accumulated
    before it, and the new running maximum and denominator."""
    scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(max_score, tl.max(scores, axis=1))
    # A row that has seen nothing yet (padding rows, masked heads) keeps -inf; shift it by 0
    # instead so exp2 gives 0, not NaN.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    probs = tl.exp2(scores - shift[:, None])  # [BLOCK_M, BLOCK_N]
    correction = tl.exp2(max_score - shift)  # [BLOCK_M]
    denominator = denominator * correction + tl.sum(probs, axis=1)
    return probs, correction, new_max, denominator


@triton.jit
def attend_fresh_tile(
    q,  # [BLOCK_M, HEAD_DIM] in DOT_DTYPE
    acc,  # [BLOCK_M, HEAD_DIM] fp32
    max_score,  # [BLOCK_M] fp32
    denominator,  # [BLOCK_M] fp32
    rows,  # [BLOCK_N] rows of key / value holding the tile's keys
    row_mask,  # [BLOCK_N] keys that exist
    visible,  # [BLOCK_M, BLOCK_N]
    k_head_ptr,  # key_ptr offset to this KV head: [num_tokens, num_kv_heads, HEAD_DIM]
    v_head_ptr,
    dims,  # [HEAD_DIM]
    qk_scale,
    stride_key_token,
    stride_value_token,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """attend_kv_tile over the step's own keys and values (16/32-bit, contiguous head_dim)."""
    rows = rows.to(tl.int64)
    k = tl.load(
        k_head_ptr + (rows * stride_key_token)[:, None] + dims[None, :],
        mask=row_mask[:, None],
        other=0.0,
    )
    scores = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * qk_scale
    probs, correction, new_max, denominator = softmax_step(scores, visible, max_score, denominator)
    v = tl.load(
        v_head_ptr + (rows * stride_value_token)[:, None] + dims[None, :],
        mask=row_mask[:, None],
        other=0.0,
    )
    acc = acc * correction[:, None] + tl.dot(
        probs.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=DOT_PRECISION
    )
    return acc, new_max, denominator


@triton.jit
def attend_kv_tile(
    q,  # [BLOCK_M, HEAD_DIM] in DOT_DTYPE
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
    # [BLOCK_M, BLOCK_N] fp32 logits in base 2. q and k (INT8 codes too) are exact in
    # DOT_DTYPE, so the softmax scale is applied after the dot rather than folded into q.
    scores = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
    if IS_INT8:
        k_scale_offsets = (
            block_ids * stride_k_scale_block
            + slots_in_block * stride_k_scale_slot
            + kv_head * stride_k_scale_head
        )
        k_scale = tl.load(k_scale_ptr + k_scale_offsets, mask=key_mask, other=0.0)
        scores = scores * (k_scale * qk_scale)[None, :]
    else:
        scores = scores * qk_scale
    probs, correction, new_max, denominator = softmax_step(scores, visible, max_score, denominator)

    v_rows = block_ids * stride_v_cache_block + slots_in_block * stride_v_cache_slot
    if V_SLOT_MAJOR:
        # A value cache whose slots are contiguous (kernels/kv_store.py): tiles start at whole
        # blocks, so a block's slots are BLOCK_SIZE consecutive bytes (said explicitly; Triton
        # 3.9 infers it from the block ids' constancy, older versions may not), and whole held
        # blocks are read, slots past kv_end too (their weights are 0 and codes are finite), so
        # the mask is constant over each run and the loads are 16-byte vectors that reach the
        # tensor cores through ldmatrix (tests/bench/test_kernel_ptx.py checks the PTX).
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
