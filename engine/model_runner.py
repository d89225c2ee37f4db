"""Turns a schedule into flat tensors, runs the model over the paged KV cache, returns logits.
No policy: which tokens run is decided by the scheduler."""

from __future__ import annotations

import torch

from engine.config import CacheConfig, KVCacheDtype, ModelConfig
from engine.forward_batch import ForwardBatch, LayerKVCache
from engine.models.llama import LlamaForCausalLM
from engine.scheduler import SchedulerOutput


def kv_bytes_per_block(model: ModelConfig, cache: CacheConfig, dtype: torch.dtype) -> int:
    """Bytes one block takes over all layers, keys and values (and INT8 scales)."""
    per_token_head = model.head_dim * (
        1 if cache.kv_cache_dtype is KVCacheDtype.INT8 else torch.finfo(dtype).bits // 8
    )
    if cache.kv_cache_dtype is KVCacheDtype.INT8:
        per_token_head += 4  # fp32 scale
    return (
        2 * model.num_hidden_layers * cache.block_size * model.num_key_value_heads * per_token_head
    )


def allocate_kv_caches(
    model: ModelConfig,
    cache: CacheConfig,
    num_blocks: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[LayerKVCache]:
    shape = (num_blocks, cache.block_size, model.num_key_value_heads, model.head_dim)
    layers = []
    for _ in range(model.num_hidden_layers):
        if cache.kv_cache_dtype is KVCacheDtype.INT8:
            layers.append(
                LayerKVCache(
                    k_cache=torch.zeros(shape, dtype=torch.int8, device=device),
                    v_cache=torch.zeros(shape, dtype=torch.int8, device=device),
                    k_scale=torch.ones(shape[:3], dtype=torch.float32, device=device),
                    v_scale=torch.ones(shape[:3], dtype=torch.float32, device=device),
                )
            )
        else:
            layers.append(
                LayerKVCache(
                    k_cache=torch.zeros(shape, dtype=dtype, device=device),
                    v_cache=torch.zeros(shape, dtype=dtype, device=device),
                )
            )
    return layers


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[LayerKVCache],
        block_size: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device

    def prepare(self, out: SchedulerOutput) -> ForwardBatch:
        """Flatten the scheduled chunks into a ForwardBatch on the device."""
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_query_lens = [0]
        context_lens: list[int] = []
        logits_indices: list[int] = []
        bs = self.block_size
        max_blocks = max(len(c.seq.block_ids) for c in out.chunks)
        block_tables = torch.zeros((len(out.chunks), max_blocks), dtype=torch.int32)
        for i, chunk in enumerate(out.chunks):
            seq, start, end = chunk.seq, chunk.start, chunk.start + chunk.num_tokens
            block_ids = seq.block_ids
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(block_ids[p // bs] * bs + p % bs for p in range(start, end))
            cu_query_lens.append(cu_query_lens[-1] + chunk.num_tokens)
            context_lens.append(end)
            block_tables[i, : len(block_ids)] = torch.tensor(block_ids, dtype=torch.int32)
            if chunk.sample:
                logits_indices.append(cu_query_lens[-1] - 1)

        def dev(values: list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

        return ForwardBatch(
            input_ids=dev(input_ids, torch.int64),
            positions=dev(positions, torch.int64),
            slot_mapping=dev(slots, torch.int64),
            block_tables=block_tables.to(self.device, non_blocking=True),
            cu_query_lens=dev(cu_query_lens, torch.int32),
            context_lens=dev(context_lens, torch.int32),
            logits_indices=dev(logits_indices, torch.int64),
        )

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> torch.Tensor:
        """Run one step; returns fp32 logits [num_sampled, vocab_size] in sampled-chunk order."""
        batch = self.prepare(out)
        hidden = self.model(batch, self.kv_caches)
        return self.model.compute_logits(hidden)
