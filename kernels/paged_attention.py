"""Causal attention over the paged KV cache for a mixed batch of prefill chunks and decodes.

Every sequence s contributes query_len = cu_query_lens[s+1] - cu_query_lens[s] query tokens
(1 for a decode, a chunk for a prefill) whose keys and values were already written to the cache,
so the cache holds context_lens[s] tokens of s, the queries being the last query_len of them.
Query i of s sits at position context_lens[s] - query_len + i and sees every position <= its own.

The Triton kernel (`paged_attention`) is flash-attention style: one program per (query block of
one sequence, KV head) walks the sequence's KV blocks through its block table with an online
softmax. The query heads that share a KV head are processed together, so one K/V tile read
serves the whole group and `tl.dot` sees M = query tokens x group heads rows:

    tile row m -> token  local_q + m // GROUP_PAD  of the sequence's chunk
               -> head   kv_head * GROUP_SIZE + m % GROUP_PAD   (rows past GROUP_SIZE masked)

Query blocks are numbered without reading lengths on the host (no device sync, so the launch
can be captured in a CUDA graph): sequence s owns blocks from cu_query_lens[s] // BLOCK_Q + s,
enough for its cdiv(query_len, BLOCK_Q) blocks, so num_tokens // BLOCK_Q + num_seqs programs
cover any batch and each program finds its sequence by binary search over cu_query_lens.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.kv_store import check_cache_layout, gather_kv_ref, is_slot_major
from kernels.kv_tile import attend_fresh_tile, attend_kv_tile
from kernels.shared_prefix import SharedPrefix, shared_prefix_attention

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def paged_attention_ref(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_query_lens: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    shared_prefix: SharedPrefix | None = None,
    num_decode_seqs: int = 0,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attend each sequence's queries to its cached keys/values.

    query: [num_tokens, num_heads, head_dim]; block_tables: [num_seqs, max_blocks_per_seq] int;
    cu_query_lens: [num_seqs + 1] int; context_lens: [num_seqs] int.
    Returns [num_tokens, num_heads, head_dim] in query's dtype. Rows of query beyond
    cu_query_lens[-1] (padding) are returned as zeros. shared_prefix and num_decode_seqs (the
    first num_decode_seqs sequences have one query each) only say how the Triton version may
    split the work; the result is the same without them, so they are ignored here.

    key / value: [num_tokens, num_kv_heads, head_dim], the rows the step just wrote to the
    cache. Over an INT8 cache a chunk of more than one query attends to its own tokens through
    these, unquantized (it has them at hand; only earlier positions need the cache); decodes
    read their one new token back from the cache like every other. A 16/32-bit cache holds
    the same rows, so there they change nothing.
    """
    num_heads = query.shape[1]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros_like(query)
    cu = cu_query_lens.tolist()
    ctx = context_lens.tolist()
    for s in range(len(ctx)):
        start, end, context_len = cu[s], cu[s + 1], ctx[s]
        query_len = end - start
        if query_len == 0:
            continue
        k = gather_kv_ref(k_cache, k_scale, block_tables[s], context_len, query.dtype)
        v = gather_kv_ref(v_cache, v_scale, block_tables[s], context_len, query.dtype)
        if key is not None and value is not None and k_cache.dtype == torch.int8 and query_len > 1:
            cached = context_len - query_len
            k = torch.cat((k[:cached], key[start:end].to(k.dtype)))
            v = torch.cat((v[:cached], value[start:end].to(v.dtype)))
        q = query[start:end].transpose(0, 1).unsqueeze(0)  # [1, num_heads, query_len, head_dim]
        k = k.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
        v = v.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
        if query_len == context_len:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        elif query_len == 1:
            o = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            device = query.device
            q_pos = torch.arange(context_len - query_len, context_len, device=device).unsqueeze(1)
            mask = (
                torch.arange(context_len, device=device).unsqueeze(0) <= q_pos
            )  # [query_len, context_len]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        out[start:end] = o.squeeze(0).transpose(0, 1)
    return out


@triton.jit
def _find_sequence(
    cu_query_lens_ptr,  # [num_seqs + 1]
    num_seqs,
    q_block,
    BLOCK_Q: tl.constexpr,
):
    """The last sequence s whose first query block, cu_query_lens[s] // BLOCK_Q + s, is
    <= q_block (first blocks strictly increase with s)."""
    low = tl.full((), 0, tl.int32)
    high = low + num_seqs - 1
    while low < high:
        mid = (low + high + 1) // 2
        mid_first_block = tl.load(cu_query_lens_ptr + mid).to(tl.int32) // BLOCK_Q + mid
        found = mid_first_block <= q_block
        low = tl.where(found, mid, low)
        high = tl.where(found, high, mid - 1)
    return low


# Sizes that change from step to step are not specialised on (Triton would compile a variant for
# each of value 1 / multiple of 16 / other): a mixed step's new variant cost the run a compile
# in the middle of a wave. The block table's row stride is its width, the longest sequence's
# block count in the step (W8's first table width not a multiple of 16 cost 2.6 s mid-run).
# seq_offset lets a launch start at a later sequence of the step's block table and lengths
# without slicing them (a slice's pointer may lose 16-byte alignment, another variant).
@triton.jit(do_not_specialize=["num_seqs", "seq_offset", "stride_block_tables_seq"])
def _paged_attention_kernel(
    query_ptr,  # [num_tokens, num_heads, HEAD_DIM]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
    v_cache_ptr,  # [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
    k_scale_ptr,  # [num_blocks, BLOCK_SIZE, num_kv_heads] fp32 (IS_INT8 only)
    v_scale_ptr,  # [num_blocks, BLOCK_SIZE, num_kv_heads] fp32 (IS_INT8 only)
    block_tables_ptr,  # [num_seqs, max_blocks_per_seq]
    cu_query_lens_ptr,  # [num_seqs + 1]
    context_lens_ptr,  # [num_seqs]
    out_ptr,  # [num_tokens, num_heads, HEAD_DIM]
    prefix_lens_ptr,  # [num_seqs] int32 (HAS_PREFIX only): keys before this come from prefix_out
    prefix_out_ptr,  # [num_tokens, num_heads, HEAD_DIM] fp32 (HAS_PREFIX only)
    prefix_lse_ptr,  # [num_tokens, num_heads] fp32, base 2 (HAS_PREFIX only)
    key_ptr,  # [num_tokens, num_kv_heads, HEAD_DIM] the step's keys (FRESH_KV only)
    value_ptr,  # [num_tokens, num_kv_heads, HEAD_DIM] (FRESH_KV only)
    num_seqs,
    seq_offset,  # sequence s of this launch is row s + seq_offset of the tables and lengths
    qk_scale,  # softmax scale * log2(e): the softmax runs in base 2
    stride_query_token,
    stride_query_head,
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
    stride_block_tables_seq,
    stride_out_token,
    stride_out_head,
    stride_prefix_out_token,
    stride_prefix_out_head,
    stride_prefix_lse_token,
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    GROUP_SIZE: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FRESH_BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    V_SLOT_MAJOR: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    IS_INT8: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HAS_PREFIX: tl.constexpr,
    FRESH_KV: tl.constexpr,
):
    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_sequence(cu_query_lens_ptr, num_seqs, q_block, BLOCK_Q)
    q_start = tl.load(cu_query_lens_ptr + seq).to(tl.int32)
    query_len = tl.load(cu_query_lens_ptr + seq + 1).to(tl.int32) - q_start
    local_q = (q_block - (q_start // BLOCK_Q + seq)) * BLOCK_Q  # first chunk row of this block
    if local_q >= query_len:  # a spare program: this sequence has fewer blocks
        return
    table_seq = seq + seq_offset
    context_len = tl.load(context_lens_ptr + table_seq).to(tl.int32)

    rows = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    dims = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    token_in_chunk = local_q + rows // GROUP_PAD  # [BLOCK_M]
    head_in_group = rows % GROUP_PAD
    row_mask = (token_in_chunk < query_len) & (head_in_group < GROUP_SIZE)
    token = (q_start + token_in_chunk).to(tl.int64)
    head = kv_head * GROUP_SIZE + head_in_group
    q_offsets = (token * stride_query_token + head * stride_query_head)[:, None] + dims[None, :]
    q = tl.load(query_ptr + q_offsets, mask=row_mask[:, None], other=0.0)
    q = q.to(DOT_DTYPE)  # [BLOCK_M, HEAD_DIM]
    q_position = context_len - query_len + token_in_chunk  # [BLOCK_M]
    # Causal: no row of this block sees past the position of its last token.
    kv_end = tl.minimum(context_len, context_len - query_len + local_q + BLOCK_Q)
    # With a shared prefix (kernels/shared_prefix.py) its keys were attended already.
    kv_begin = 0
    if HAS_PREFIX:
        kv_begin = tl.load(prefix_lens_ptr + table_seq).to(tl.int32)
        if V_SLOT_MAJOR:  # prefixes are whole blocks: value tiles start at block boundaries
            kv_begin = tl.multiple_of(kv_begin, BLOCK_SIZE)

    block_table_ptr = block_tables_ptr + table_seq.to(tl.int64) * stride_block_tables_seq
    k_head_ptr = k_cache_ptr + kv_head * stride_k_cache_head
    v_head_ptr = v_cache_ptr + kv_head * stride_v_cache_head
    max_score = tl.full([BLOCK_M], float("-inf"), tl.float32)
    denominator = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # With FRESH_KV a chunk (more than one query) reads its own keys from key / value, and the
    # cache only for the positions before it.
    chunk_start = context_len - query_len  # position of the chunk's first token
    cache_end = kv_end
    if FRESH_KV:
        if query_len > 1:
            cache_end = tl.minimum(kv_end, chunk_start)
    for kv_start in range(kv_begin, cache_end, BLOCK_N):
        keys = kv_start + tl.arange(0, BLOCK_N)  # [BLOCK_N] positions in the sequence
        key_mask = keys < cache_end
        visible = key_mask[None, :] & (keys[None, :] <= q_position[:, None])
        acc, max_score, denominator = attend_kv_tile(
            q,
            acc,
            max_score,
            denominator,
            keys,
            key_mask,
            cache_end,
            visible,
            block_table_ptr,
            k_head_ptr,
            v_head_ptr,
            k_scale_ptr,
            v_scale_ptr,
            kv_head,
            dims,
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
            BLOCK_SIZE,
            V_SLOT_MAJOR,
            IS_INT8,
            DOT_DTYPE,
            DOT_PRECISION,
        )
    if FRESH_KV:
        k_fresh_ptr = key_ptr + kv_head * stride_key_head
        v_fresh_ptr = value_ptr + kv_head * stride_value_head
        for kv_start in range(cache_end, kv_end, FRESH_BLOCK_N):
            keys = kv_start + tl.arange(0, FRESH_BLOCK_N)
            key_mask = keys < kv_end
            visible = key_mask[None, :] & (keys[None, :] <= q_position[:, None])
            acc, max_score, denominator = attend_fresh_tile(
                q,
                acc,
                max_score,
                denominator,
                q_start + keys - chunk_start,  # the rows of the chunk's tokens at these positions
                key_mask,
                visible,
                k_fresh_ptr,
                v_fresh_ptr,
                dims,
                qk_scale,
                stride_key_token,
                stride_value_token,
                DOT_DTYPE,
                DOT_PRECISION,
            )

    if HAS_PREFIX:  # merge with the prefix part: both are softmax pieces of one row
        prefix_lse = tl.load(
            prefix_lse_ptr + token * stride_prefix_lse_token + head,
            mask=row_mask,
            other=float("-inf"),
        )
        prefix_offsets = (token * stride_prefix_out_token + head * stride_prefix_out_head)[
            :, None
        ] + dims[None, :]
        has_prefix = row_mask & (prefix_lse > float("-inf"))
        prefix_out = tl.load(
            prefix_out_ptr + prefix_offsets, mask=has_prefix[:, None], other=0.0
        )  # normalised over the prefix; times 2^(lse - shift) it is the unnormalised sum
        new_max = tl.maximum(max_score, prefix_lse)
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        own = tl.exp2(max_score - shift)
        shared = tl.exp2(prefix_lse - shift)
        acc = acc * own[:, None] + prefix_out * shared[:, None]
        denominator = denominator * own + shared
    out = acc / tl.where(denominator == 0.0, 1.0, denominator)[:, None]
    out_offsets = (token * stride_out_token + head * stride_out_head)[:, None] + dims[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None])


@dataclass(frozen=True)
class TileConfig:
    """Launch shape of the kernel: BLOCK_M = block_q * next_pow2(group) query rows per
    program, block_n cached keys per iteration and fresh_block_n of the step's own keys
    (launches given key / value; block_n when not set)."""

    block_q: int
    block_n: int
    num_warps: int
    num_stages: int
    fresh_block_n: int | None = None


def default_tile_config(
    num_tokens: int, num_seqs: int, group_pad: int, is_int8: bool, fresh: bool = False
) -> TileConfig:
    """Batches of mostly single-token queries (decodes, maybe a few padding rows) get the
    smallest tile tl.dot takes (M = 16 rows); prefill chunks get more rows per K/V read. Only
    shapes are read, so choosing needs no device sync.

    Tuned on one H100 (bf16, 32 query / 8 KV heads, head_dim 128, block_size 16): decode reads
    the bf16 cache at ~2.7 TB/s with these; prefill reaches ~250 TFLOP/s (bf16 cache) and
    ~185 (INT8 cache), about half of torch's dense flash attention. INT8 launches whose
    chunks read their own keys from the step's 16-bit rows (fresh) reach ~330 TFLOP/s on
    whole 4k prompts and ~245 on chunks after a 2k cached prefix; bf16 ones ~333 and ~310
    (the paged loop alone: ~290 and ~298).
    """
    if num_tokens < 2 * num_seqs:
        return TileConfig(block_q=max(1, 16 // group_pad), block_n=128, num_warps=4, num_stages=3)
    if fresh:  # query rows, cached keys and own keys per iteration
        rows, block_n, fresh_block_n = (64, 128, 64) if is_int8 else (128, 32, 32)
        return TileConfig(max(1, rows // group_pad), block_n, 4, 3, fresh_block_n=fresh_block_n)
    if is_int8:
        return TileConfig(block_q=max(1, 64 // group_pad), block_n=128, num_warps=4, num_stages=3)
    return TileConfig(block_q=max(1, 128 // group_pad), block_n=32, num_warps=4, num_stages=3)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_query_lens: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    shared_prefix: SharedPrefix | None = None,
    num_decode_seqs: int = 0,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of paged_attention_ref (same contract; padding rows come back as zeros).

    Reads no lengths on the host. An INT8 cache is dequantized inside the kernel. head_dim must
    be a power of two (>= 16). Logits, softmax statistics and the accumulator are fp32; on a GPU
    the two matrix products take 16-bit operands for a 16-bit query (exact for q, k, v, INT8
    codes; the probabilities are rounded to that dtype, as in flash attention).

    With shared_prefix (decode steps only: one query per sequence) the shared prefixes are
    attended once per tile of sequences first (kernels/shared_prefix.py) and each sequence
    then reads only its own keys, merging the two softmax pieces.

    key / value (what store_kv just wrote) are read by the chunks of more than one query
    for their own tokens (see paged_attention_ref): over an INT8 cache that removes their
    quantization; a 16/32-bit cache holds the same rows, and there only the speed changes
    (the dense loop over a chunk's own rows is faster than the paged one).
    """
    group_pad = triton.next_power_of_2(query.shape[1] // k_cache.shape[2])
    is_int8 = k_cache.dtype == torch.int8
    num_tokens, num_seqs = query.shape[0], context_lens.shape[0]
    decodes = num_decode_seqs
    # Only chunks read key / value: a step of decodes alone keeps the kernel without them.
    if shared_prefix is not None or decodes >= num_seqs:
        key = value = None
    config = default_tile_config(num_tokens, num_seqs, group_pad, is_int8, key is not None)
    if shared_prefix is None and 0 < decodes < num_seqs and config.block_q * group_pad > 16:
        # A mixed step: its leading decodes would run in prefill tiles (BLOCK_M rows for one
        # query each, short key tiles); give them a launch with decode tiles of their own.
        out = torch.zeros(query.shape, dtype=query.dtype, device=query.device)
        rest = slice(decodes, None)  # the rows after the leading decodes
        for rows, cu, first_seq, part_key, part_value in (
            (slice(0, decodes), cu_query_lens[: decodes + 1], 0, None, None),
            (
                rest,
                cu_query_lens[decodes:] - decodes,
                decodes,
                None if key is None else key[rest],
                None if value is None else value[rest],
            ),
        ):
            part_tokens, part_seqs = query[rows].shape[0], cu.shape[0] - 1
            launch_paged_attention(
                query[rows],
                k_cache,
                v_cache,
                block_tables,
                cu,
                context_lens,
                scale,
                k_scale,
                v_scale,
                default_tile_config(
                    part_tokens, part_seqs, group_pad, is_int8, part_key is not None
                ),
                out=out[rows],
                seq_offset=first_seq,
                key=part_key,
                value=part_value,
            )
        return out
    return launch_paged_attention(
        query,
        k_cache,
        v_cache,
        block_tables,
        cu_query_lens,
        context_lens,
        scale,
        k_scale,
        v_scale,
        config,
        shared_prefix,
        key=key,
        value=value,
    )


def launch_paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_query_lens: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    config: TileConfig,
    shared_prefix: SharedPrefix | None = None,
    out: torch.Tensor | None = None,
    seq_offset: int = 0,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """paged_attention with an explicit tile config (for tuning on a GPU); writes into out
    (zeros, query's shape, dense rows) when given. The launch covers the len(cu_query_lens) - 1
    sequences from row seq_offset of block_tables and context_lens. With key / value (rows
    like query's) every chunk of more than one query reads its own keys from them."""
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, "head_dim must be a power of two"
    assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
    assert k_cache.shape[3] == head_dim
    check_cache_layout(k_cache, v_cache)
    group_size = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group_size)
    assert config.block_q * group_pad >= 16, "tl.dot needs at least 16 rows"
    is_int8 = k_cache.dtype == torch.int8
    if is_int8:
        assert k_scale is not None and v_scale is not None, "INT8 cache needs scale tensors"
    else:
        # Unused by the kernel; any tensor gives it a pointer and strides.
        k_scale = v_scale = k_cache
    query = query if query.stride(-1) == 1 else query.contiguous()
    if out is None:
        out = torch.zeros(query.shape, dtype=query.dtype, device=query.device)
    num_seqs = cu_query_lens.shape[0] - 1
    assert seq_offset + num_seqs <= context_lens.shape[0]
    assert shared_prefix is None or seq_offset == 0
    if num_tokens == 0 or num_seqs == 0:
        return out
    assert (key is None) == (value is None), "key and value come together"
    fresh = key is not None
    if key is None or value is None:
        key = value = query  # unused by the kernel; any tensor gives it pointers and strides
    else:
        assert shared_prefix is None, "fresh keys are for chunks, shared prefixes for decodes"
        assert key.shape == value.shape == (num_tokens, num_kv_heads, head_dim)
        key = key if key.stride(-1) == 1 else key.contiguous()
        value = value if value.stride(-1) == 1 else value.contiguous()
    # CPU tensors mean the Triton interpreter, whose 16-bit tl.dot is wrong: use fp32 there.
    # An fp32 model keeps fp32 products ("ieee", not TF32).
    use_fp32_dot = query.dtype == torch.float32 or query.device.type != "cuda"
    dot_dtype = tl.float32 if use_fp32_dot else _TL_DTYPES[query.dtype]
    dot_precision = "ieee" if use_fp32_dot else "tf32"  # "tf32" only matters for fp32
    if shared_prefix is not None:
        assert num_tokens == num_seqs, "shared-prefix attention is for decode steps only"
        prefix_out, prefix_lse = shared_prefix_attention(
            query,
            k_cache,
            v_cache,
            block_tables,
            shared_prefix,
            scale,
            k_scale,
            v_scale,
            dot_dtype,
            dot_precision,
        )
        prefix_lens = shared_prefix.prefix_lens
    else:  # unused by the kernel; any tensors give it pointers and strides
        prefix_out, prefix_lse, prefix_lens = out, out[:, :, 0], context_lens
    grid = (num_tokens // config.block_q + num_seqs, num_kv_heads)
    _paged_attention_kernel[grid](
        query,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        block_tables,
        cu_query_lens,
        context_lens,
        out,
        prefix_lens,
        prefix_out,
        prefix_lse,
        key,
        value,
        num_seqs,
        seq_offset,
        scale * math.log2(math.e),
        query.stride(0),
        query.stride(1),
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
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        prefix_out.stride(0),
        prefix_out.stride(1),
        prefix_lse.stride(0),
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        GROUP_SIZE=group_size,
        GROUP_PAD=group_pad,
        BLOCK_Q=config.block_q,
        BLOCK_N=config.block_n,
        FRESH_BLOCK_N=config.fresh_block_n or config.block_n,
        BLOCK_SIZE=block_size,
        V_SLOT_MAJOR=is_slot_major(v_cache),
        HEAD_DIM=head_dim,
        IS_INT8=is_int8,
        DOT_DTYPE=dot_dtype,
        DOT_PRECISION=dot_precision,
        HAS_PREFIX=shared_prefix is not None,
        FRESH_KV=fresh,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
