"""The flat tensors one model step consumes, built by the model runner from a schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.shared_prefix import SharedPrefix


@dataclass
class ForwardBatch:
    """Tokens of all scheduled chunks, concatenated in chunk order.

    Sequence s owns query rows cu_query_lens[s]:cu_query_lens[s+1]; its KV, after this step
    writes the new rows at slot_mapping, spans context_lens[s] tokens in block_tables[s].
    logits_indices picks the rows whose next token is sampled (the last row of each chunk that
    reaches the end of its sequence).
    """

    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    slot_mapping: torch.Tensor  # [num_tokens] int64, -1 for padding
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    cu_query_lens: torch.Tensor  # [num_seqs + 1] int32
    context_lens: torch.Tensor  # [num_seqs] int32
    logits_indices: torch.Tensor  # [num_sampled] int64
    # Decode steps only: sequences sharing prefix blocks, attended once per tile of them.
    shared_prefix: SharedPrefix | None = None
    # The leading sequences with one query row each (a mixed step's decodes come first):
    # attention runs them in a launch of their own, with decode tiles.
    num_decode_seqs: int = 0


@dataclass
class LayerKVCache:
    """One layer's paged cache (see kernels/kv_store.py for the layout)."""

    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    k_scale: torch.Tensor | None = None  # [num_blocks, block_size, num_kv_heads] fp32, INT8 only
    v_scale: torch.Tensor | None = None
