"""CUDA graphs for decode-only steps: one graph per padded batch size, sharing one memory pool
and one set of static input buffers. A step of n sequences replays the graph of the smallest
captured size >= n; padding rows have no query tokens (cu_query_lens flat), context length 0 and
slot -1, so they read and write nothing."""

from __future__ import annotations

from typing import Any

import torch

from engine.forward_batch import ForwardBatch, LayerKVCache
from engine.model_runner import HostBatch, padded_block_table
from engine.models.llama import LlamaForCausalLM


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_batch_size + 1, 16))
    return sorted({s for s in sizes if s <= max_batch_size} | {max_batch_size})


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[LayerKVCache],
        max_batch_size: int,
        max_blocks_per_seq: int,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = graph_batch_sizes(max_batch_size)
        self.max_blocks_per_seq = max_blocks_per_seq
        device = model.embed_tokens_weight.device
        n = max_batch_size
        self.static = ForwardBatch(
            input_ids=torch.zeros(n, dtype=torch.int64, device=device),
            positions=torch.zeros(n, dtype=torch.int64, device=device),
            slot_mapping=torch.full((n,), -1, dtype=torch.int64, device=device),
            block_tables=torch.zeros((n, max_blocks_per_seq), dtype=torch.int32, device=device),
            cu_query_lens=torch.zeros(n + 1, dtype=torch.int32, device=device),
            context_lens=torch.zeros(n, dtype=torch.int32, device=device),
            logits_indices=torch.arange(n, dtype=torch.int64, device=device),
        )
        # host staging buffer: ids, positions, slots, cu_query_lens[1:], context_lens
        self.staging = torch.zeros((5, n), dtype=torch.int64).pin_memory()
        self.block_staging = torch.zeros((n, max_blocks_per_seq), dtype=torch.int32).pin_memory()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool: Any = None  # the graph memory pool, shared by all sizes

    def fits(self, host: HostBatch) -> bool:
        return len(host.input_ids) <= self.sizes[-1] and all(
            len(r) <= self.max_blocks_per_seq for r in host.block_tables
        )

    def _view(self, size: int) -> ForwardBatch:
        s = self.static
        return ForwardBatch(
            input_ids=s.input_ids[:size],
            positions=s.positions[:size],
            slot_mapping=s.slot_mapping[:size],
            block_tables=s.block_tables[:size],
            cu_query_lens=s.cu_query_lens[: size + 1],
            context_lens=s.context_lens[:size],
            logits_indices=s.logits_indices[:size],
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first (smaller graphs reuse its pool)."""
        for size in reversed(self.sizes):
            batch = self._view(size)
            for _ in range(2):  # warm up (Triton compiles/autotunes outside the capture)
                self.model.compute_logits(self.model(batch, self.kv_caches))
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[size] = self.model.compute_logits(self.model(batch, self.kv_caches))
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def run(self, host: HostBatch) -> torch.Tensor:
        n = len(host.input_ids)
        size = next(s for s in self.sizes if s >= n)
        staging = self.staging
        staging[:, :size].zero_()
        staging[2, :size] = -1
        staging[0, :n] = torch.tensor(host.input_ids)
        staging[1, :n] = torch.tensor(host.positions)
        staging[2, :n] = torch.tensor(host.slot_mapping)
        staging[3, :size] = n
        staging[3, :n] = torch.tensor(host.cu_query_lens[1:])
        staging[4, :n] = torch.tensor(host.context_lens)
        width = max(len(r) for r in host.block_tables)
        self.block_staging[:n, :width] = padded_block_table(host.block_tables, width)
        s = self.static
        s.input_ids[:size].copy_(staging[0, :size], non_blocking=True)
        s.positions[:size].copy_(staging[1, :size], non_blocking=True)
        s.slot_mapping[:size].copy_(staging[2, :size], non_blocking=True)
        s.cu_query_lens[1 : size + 1].copy_(staging[3, :size], non_blocking=True)
        s.context_lens[:size].copy_(staging[4, :size], non_blocking=True)
        s.block_tables[:n, :width].copy_(self.block_staging[:n, :width], non_blocking=True)
        self.graphs[size].replay()
        return self.outputs[size][:n]
