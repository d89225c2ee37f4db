"""One step of flash-style attention over the paged KV cache, shared by the paged attention and
shared-prefix kernels: load the keys at positions `keys` through a block table (an INT8 cache's
codes go into the dots as they are; key scales multiply the scores and value scales the
probabilities), score them against the query tile, and fold them into the running
online softmax (max_score, denominator) and accumulator. Scores are in base 2 (qk_scale
includes log2(e)); `visible` masks what each query row may see.

INT8 codes on the GPU (FP16_CODES): converting int8 to a float one element at a time is a
quarter-rate instruction, and at decode sizes the conversions, not the memory, set the kernel's
pace (an 8B-shape decode read the INT8 cache at 1.6 TB/s against 2.7 for bf16). Instead four
codes at a time become fp16 with integer byte moves: code + 128 is put under the exponent of
1024 (fp16 bits 0x64XX = 1024 + XX, exact) and 1152 subtracted, two values per instruction.
Both products then run in fp16, so the query is brought into fp16 range by a power of two per
row (exact; undone on the scores) and the value-scaled probabilities are divided by the tile's
largest value scale (so none falls below fp16's normal range; multiplied back on the product).
"""

import triton
import triton.language as tl


@triton.jit
def int8_codes_to_fp16(codes):
    """INT8 codes -> the same integers in fp16, four per 32-bit register (GPU only: PTX)."""
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 biased, high_byte, bias;
        mov.b32 high_byte, 0x64646464;
        mov.b32 bias, 0x64806480;
        xor.b32 biased, $2, 0x80808080;
        prmt.b32 $0, biased, high_byte, 0x4140;
        prmt.b32 $1, biased, high_byte, 0x4342;
        sub.f16x2 $0, $0, bias;
        sub.f16x2 $1, $1, bias;
        }
        """,
        constraints="=r,=r,r",
        args=[codes],
        dtype=tl.float16,
        is_pure=True,
        pack=4,
    )


@triton.jit
def query_for_dot(q, DOT_DTYPE: tl.constexpr, FP16_CODES: tl.constexpr):
    """The query tile [BLOCK_M, HEAD_DIM] as the dots take it, and the factor per row [BLOCK_M]
    that the scores must be multiplied by (1 unless FP16_CODES)."""
    if FP16_CODES:
        q = q.to(tl.float32)
        row_max = tl.max(tl.abs(q), axis=1)
        # A power of two >= the row's largest |q|: dividing by it is exact and leaves |q| <= 1.
        row_scale = tl.exp2(tl.ceil(tl.log2(tl.where(row_max > 0.0, row_max, 1.0))))
        return (q / row_scale[:, None]).to(tl.float16), row_scale
    return q.to(DOT_DTYPE), tl.full([q.shape[0]], 1.0, tl.float32)


@triton.jit
def attend_kv_tile(
    q,  # [BLOCK_M, HEAD_DIM] in DOT_DTYPE, from query_for_dot
    q_row_scale,  # [BLOCK_M] fp32, from query_for_dot
    acc,  # [BLOCK_M, HEAD_DIM] fp32
    max_score,  # [BLOCK_M] fp32
    denominator,  # [BLOCK_M] fp32
    keys,  # [BLOCK_N] positions in the sequence
    key_mask,  # [BLOCK_N] positions that exist
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
    stride_v_cache_block,
    stride_v_cache_slot,
    stride_k_scale_block,
    stride_k_scale_slot,
    stride_k_scale_head,
    stride_v_scale_block,
    stride_v_scale_slot,
    stride_v_scale_head,
    BLOCK_SIZE: tl.constexpr,
    IS_INT8: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FP16_CODES: tl.constexpr,  # IS_INT8 on the GPU with a 16-bit model: see the module doc
):
    block_ids = tl.load(block_table_ptr + keys // BLOCK_SIZE, mask=key_mask, other=0)
    block_ids = block_ids.to(tl.int64)
    slots_in_block = keys % BLOCK_SIZE
    k_rows = block_ids * stride_k_cache_block + slots_in_block * stride_k_cache_slot
    k = tl.load(k_head_ptr + k_rows[:, None] + dims[None, :], mask=key_mask[:, None], other=0)
    if FP16_CODES:
        k = int8_codes_to_fp16(k)
    # [BLOCK_M, BLOCK_N] fp32 logits in base 2. q and k (INT8 codes too) are exact in
    # DOT_DTYPE, so the softmax scale is applied after the dot rather than folded into q.
    scores = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
    if FP16_CODES:
        scores = scores * q_row_scale[:, None]
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
    scores = tl.where(visible, scores, float("-inf"))

    new_max = tl.maximum(max_score, tl.max(scores, axis=1))
    # A row that has seen nothing yet (padding rows, masked heads) keeps -inf; shift it by 0
    # instead so exp2 gives 0, not NaN.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    probs = tl.exp2(scores - shift[:, None])  # [BLOCK_M, BLOCK_N]
    correction = tl.exp2(max_score - shift)  # [BLOCK_M]
    denominator = denominator * correction + tl.sum(probs, axis=1)

    v_rows = block_ids * stride_v_cache_block + slots_in_block * stride_v_cache_slot
    v = tl.load(v_head_ptr + v_rows[:, None] + dims[None, :], mask=key_mask[:, None], other=0)
    if FP16_CODES:
        v = int8_codes_to_fp16(v)
    tile_v_scale = 1.0
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
        if FP16_CODES:  # keep the weights <= 1, inside fp16's normal range
            tile_v_scale = tl.maximum(tl.max(v_scale, axis=0), 1e-30)
            v_scale = v_scale / tile_v_scale
        weights = probs * v_scale[None, :]
    else:
        weights = probs
    values = tl.dot(weights.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=DOT_PRECISION)
    acc = acc * correction[:, None] + values * tile_v_scale
    return acc, new_max, denominator
