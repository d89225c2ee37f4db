"""Causal attention over the paged KV cache for a mixed batch of prefill chunks and decodes.

Every sequence s contributes query_len = cu_query_lens[s+1] - cu_query_lens[s] query tokens
(1 for a decode, a chunk for a prefill) whose keys and values were already written to the cache,
so the cache holds context_lens[s] tokens of s, the queries being the last query_len of them.
Query i of s sits at position context_lens[s] - query_len + i and sees every position <= its own.
"""

import torch
import torch.nn.functional as F


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
) -> torch.Tensor:
    """Attend each sequence's queries to its cached keys/values.

    query: [num_tokens, num_heads, head_dim]; block_tables: [num_seqs, max_blocks_per_seq] int;
    cu_query_lens: [num_seqs + 1] int; context_lens: [num_seqs] int.
    Returns [num_tokens, num_heads, head_dim] in query's dtype. Rows of query beyond
    cu_query_lens[-1] (padding) are returned as zeros.
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
        q = query[start:end].transpose(0, 1).unsqueeze(0)  # [1, num_heads, query_len, head_dim]
        k = k.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
        v = v.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
        if query_len == context_len:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        elif query_len == 1:
            o = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            q_pos = torch.arange(context_len - query_len, context_len).unsqueeze(1)
            mask = torch.arange(context_len).unsqueeze(0) <= q_pos  # [query_len, context_len]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        out[start:end] = o.squeeze(0).transpose(0, 1)
    return out
