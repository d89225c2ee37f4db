"""Shared-prefix ("cascade") attention for decode steps.

When many decoding sequences hold the same physical KV blocks at the start of their block
tables (a common system prompt found by the prefix cache), plain paged attention reads those
blocks once per sequence. Here the prefix is attended once per tile of sequences instead: one
program takes the single query token of up to SEQS_PER_TILE sequences of one group (times the
query heads of one KV head) as the rows of one tl.dot and walks the group's prefix blocks once.
It returns, per query row, the softmax-normalised output over the prefix and its log-sum-exp
(base 2); paged attention then attends each sequence's own suffix (positions prefix_len
onwards) and merges the two (kernels/paged_attention.py, HAS_PREFIX).

The tiling is planned on the host (engine/shared_prefix.py) as fixed-size arrays, so a step can
be captured in a CUDA graph: tile t covers tile_count[t] sequences seq_order[tile_first[t]:...],
all of which share their first tile_prefix_len[t] tokens with sequence tile_leader[t], whose
block table row is read. Unused tiles have tile_leader -1. A step has one query token per
sequence: sequence s's query is row s of the query tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.kv_store import check_cache_layout, gather_kv_ref, is_slot_major
from kernels.kv_tile import attend_kv_tile


@dataclass
class SharedPrefix:
    """Device tensors describing which sequences share which prefix (see the module doc)."""

    prefix_lens: torch.Tensor  # [num_seqs] int32: tokens read from the shared prefix (0: none)
    seq_order: torch.Tensor  # [num_seqs] int32: sequence indices, each tile's members contiguous
    tile_leader: torch.Tensor  # [max_tiles] int32: sequence whose block table holds the prefix
    tile_prefix_len: torch.Tensor  # [max_tiles] int32: prefix tokens of the tile's group
    tile_first: torch.Tensor  # [max_tiles] int32: first index of the tile's members in seq_order
    tile_count: torch.Tensor  # [max_tiles] int32: members in the tile (<= seqs_per_tile)
    seqs_per_tile: int


def shared_prefix_attention_ref(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    prefix: SharedPrefix,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each covered sequence's query over its first prefix_lens[s] cached tokens.

    query: [num_seqs, num_heads, head_dim]. Returns (out fp32 [num_seqs, num_heads, head_dim],
    lse fp32 [num_seqs, num_heads] in base 2); rows of uncovered sequences are 0 and -inf.
    """
    num_seqs, num_heads, head_dim = query.shape
    group = num_heads // k_cache.shape[2]
    out = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
    lse = torch.full((num_seqs, num_heads), float("-inf"), device=query.device)
    for s, n in enumerate(prefix.prefix_lens.tolist()):
        if n == 0:
            continue
        k = gather_kv_ref(k_cache, k_scale, block_tables[s], n, torch.float32)
        v = gather_kv_ref(v_cache, v_scale, block_tables[s], n, torch.float32)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", query[s].float(), k) * scale  # [heads, n]
        lse[s] = torch.logsumexp(scores, dim=1) * math.log2(math.e)
        out[s] = torch.einsum("hn,nhd->hd", scores.softmax(dim=1), v)
    return out, lse


# The block table's row stride is the step's longest block count: not specialised on, so
# steps of every width share one compiled variant (see kernels/paged_attention.py).
@triton.jit(do_not_specialize=["stride_block_tables_seq"])
def _shared_prefix_kernel(
    query_ptr,  # [num_seqs, num_heads, HEAD_DIM]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
    v_cache_ptr,
    k_scale_ptr,  # [num_blocks, BLOCK_SIZE, num_kv_heads] fp32 (IS_INT8 only)
    v_scale_ptr,
    block_tables_ptr,  # [num_seqs, max_blocks_per_seq]
    seq_order_ptr,
    tile_leader_ptr,
    tile_prefix_len_ptr,
    tile_first_ptr,
    tile_count_ptr,
    out_ptr,  # [num_seqs, num_heads, HEAD_DIM] fp32
    lse_ptr,  # [num_seqs, num_heads] fp32
    qk_scale,  # softmax scale * log2(e)
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
    stride_lse_token,
    GROUP_SIZE: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    SEQS_PER_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    V_SLOT_MAJOR: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    IS_INT8: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    BLOCK_M: tl.constexpr = SEQS_PER_TILE * GROUP_PAD
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    leader = tl.load(tile_leader_ptr + tile)
    if leader < 0:  # an unused tile of the fixed-size plan
        return
    prefix_len = tl.load(tile_prefix_len_ptr + tile).to(tl.int32)
    first = tl.load(tile_first_ptr + tile)
    count = tl.load(tile_count_ptr + tile)

    rows = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    member = rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    row_mask = (member < count) & (head_in_group < GROUP_SIZE)
    seq = tl.load(seq_order_ptr + first + member, mask=member < count, other=0).to(tl.int64)
    head = kv_head * GROUP_SIZE + head_in_group
    q_offsets = (seq * stride_query_token + head * stride_query_head)[:, None] + dims[None, :]
    q = tl.load(query_ptr + q_offsets, mask=row_mask[:, None], other=0.0).to(DOT_DTYPE)

    block_table_ptr = block_tables_ptr + leader.to(tl.int64) * stride_block_tables_seq
    k_head_ptr = k_cache_ptr + kv_head * stride_k_cache_head
    v_head_ptr = v_cache_ptr + kv_head * stride_v_cache_head
    max_score = tl.full([BLOCK_M], float("-inf"), tl.float32)
    denominator = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for kv_start in range(0, prefix_len, BLOCK_N):
        keys = kv_start + tl.arange(0, BLOCK_N)
        key_mask = keys < prefix_len  # every prefix key precedes every query: no causal mask
        acc, max_score, denominator = attend_kv_tile(
            q,
            acc,
            max_score,
            denominator,
            keys,
            key_mask,
            prefix_len,
            key_mask[None, :],
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

    seen = denominator > 0.0
    out = acc / tl.where(seen, denominator, 1.0)[:, None]
    lse = tl.where(seen, max_score + tl.log2(tl.where(seen, denominator, 1.0)), float("-inf"))
    out_offsets = (seq * stride_out_token + head * stride_out_head)[:, None] + dims[None, :]
    tl.store(out_ptr + out_offsets, out, mask=row_mask[:, None])
    tl.store(lse_ptr + seq * stride_lse_token + head, lse, mask=row_mask)


def shared_prefix_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    prefix: SharedPrefix,
    scale: float,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    dot_dtype: tl.dtype,
    dot_precision: str,
    block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of shared_prefix_attention_ref (same contract). Reads no lengths on the
    host, so it can run inside a CUDA graph."""
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group_size = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group_size)
    assert prefix.seqs_per_tile * group_pad >= 16, "tl.dot needs at least 16 rows"
    check_cache_layout(k_cache, v_cache)
    is_int8 = k_cache.dtype == torch.int8
    if not is_int8:
        k_scale = v_scale = k_cache  # unused; any tensor gives the kernel pointers and strides
    assert k_scale is not None and v_scale is not None
    out = torch.empty((num_seqs, num_heads, head_dim), dtype=torch.float32, device=query.device)
    lse = torch.full((num_seqs, num_heads), float("-inf"), device=query.device)
    grid = (prefix.tile_leader.shape[0], num_kv_heads)
    _shared_prefix_kernel[grid](
        query,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        block_tables,
        prefix.seq_order,
        prefix.tile_leader,
        prefix.tile_prefix_len,
        prefix.tile_first,
        prefix.tile_count,
        out,
        lse,
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
        lse.stride(0),
        GROUP_SIZE=group_size,
        GROUP_PAD=group_pad,
        SEQS_PER_TILE=prefix.seqs_per_tile,
        BLOCK_N=block_n,
        BLOCK_SIZE=block_size,
        V_SLOT_MAJOR=is_slot_major(v_cache),
        HEAD_DIM=head_dim,
        IS_INT8=is_int8,
        DOT_DTYPE=dot_dtype,
        DOT_PRECISION=dot_precision,
        num_warps=4,
        num_stages=3,
    )
    return out, lse
