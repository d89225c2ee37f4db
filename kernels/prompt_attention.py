"""Causal self-attention of whole prompts over their own fresh keys and values.

A chunk that starts at position 0 (a prompt admitted whole, or the first piece of one) has
query rows that are its sequence's entire context so far, so its attention needs nothing from
the paged cache: it is plain causal attention over the chunk's own q, k, v (the cache is still
written, for later chunks and decodes). On the GPU this runs torch's FlashAttention-2 varlen
kernel: on an H100 (8B shape, 4 prompts x 4096 tokens) it reaches ~600 TFLOP/s, the paged
kernel ~290, since the paged kernel gathers keys through the block table in small tiles.

Over an INT8 cache a prompt thus attends to its unquantized keys and values (as vLLM's prefill
does); later chunks and decodes read the codes. The reference (paged_attention_ref) follows the
same rule, so the two agree.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PromptRows:
    """The trailing sequences of a step whose chunks cover their whole context (see the module
    doc): query rows first_row : first_row + num_rows, split by cu_query_lens."""

    first_row: int
    num_rows: int
    cu_query_lens: torch.Tensor  # [num_prompts + 1] int32 on the step's device, from 0
    max_query_len: int

    @property
    def num_prompts(self) -> int:
        return self.cu_query_lens.shape[0] - 1


def prompt_attention_ref(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prompts: PromptRows, scale: float
) -> torch.Tensor:
    """query: [num_rows, num_heads, head_dim]; key, value: [num_rows, num_kv_heads, head_dim],
    the prompts' rows only. Returns [num_rows, num_heads, head_dim] in query's dtype."""
    group = query.shape[1] // key.shape[1]
    out = torch.empty_like(query)
    cu = prompts.cu_query_lens.tolist()
    for start, end in itertools.pairwise(cu):
        q = query[start:end].transpose(0, 1).unsqueeze(0)  # [1, num_heads, len, head_dim]
        k = key[start:end].repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
        v = value[start:end].repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        out[start:end] = o.squeeze(0).transpose(0, 1).to(query.dtype)
    return out


def prompt_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prompts: PromptRows, scale: float
) -> torch.Tensor:
    """prompt_attention_ref with FlashAttention-2 on a GPU for 16-bit tensors (its GQA takes
    fewer key/value heads as they are); elsewhere the reference."""
    flash_ok = query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)
    if not flash_ok or query.shape[-1] % 8 or query.shape[-1] > 256:
        return prompt_attention_ref(query, key, value, prompts, scale)
    cu = prompts.cu_query_lens
    out = torch.ops.aten._flash_attention_forward(
        query,
        key if key.stride(-1) == 1 else key.contiguous(),
        value if value.stride(-1) == 1 else value.contiguous(),
        cu,
        cu,
        prompts.max_query_len,
        prompts.max_query_len,
        0.0,  # dropout
        True,  # causal
        False,  # debug mask
        scale=scale,
    )[0]
    return out
