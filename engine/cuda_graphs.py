"""CUDA graphs for steps where every sequence runs the same number of query tokens q: plain
decode steps (q = 1) and speculative verify steps (q = k + 1: the last token plus k drafts).

One family of graphs per q, one graph per padded batch size, all sharing one memory pool. A step
of n sequences replays the smallest captured size >= n. Each sequence owns q query rows; a
sequence with fewer tokens (fewer drafts) is padded to q with rows that write nothing (slot -1)
and are placed after its real rows, and its context length is extended by the padding so that
its real rows keep their positions (query row j sits at context_len - q + j). Padding sequences
beyond n have context length 0 and see nothing. Logits come back for the real rows only, in
chunk order."""

from __future__ import annotations

from typing import Any

import torch

from engine.forward_batch import ForwardBatch, LayerKVCache
from engine.model_runner import HostBatch, padded_block_table
from engine.models.llama import LlamaForCausalLM


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_batch_size + 1, 16))
    return sorted({s for s in sizes if s <= max_batch_size} | {max_batch_size})


class StepGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[LayerKVCache],
        max_batch_size: int,
        max_blocks_per_seq: int,
        query_len: int,
        pool: Any = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = graph_batch_sizes(max_batch_size)
        self.max_blocks_per_seq = max_blocks_per_seq
        self.query_len = q = query_len
        device = model.embed_tokens_weight.device
        n = max_batch_size
        self.static = ForwardBatch(
            input_ids=torch.zeros(n * q, dtype=torch.int64, device=device),
            positions=torch.zeros(n * q, dtype=torch.int64, device=device),
            slot_mapping=torch.full((n * q,), -1, dtype=torch.int64, device=device),
            block_tables=torch.zeros((n, max_blocks_per_seq), dtype=torch.int32, device=device),
            cu_query_lens=torch.arange(0, (n + 1) * q, q, dtype=torch.int32, device=device),
            context_lens=torch.zeros(n, dtype=torch.int32, device=device),
            logits_indices=torch.arange(n * q, dtype=torch.int64, device=device),
        )
        # host staging: ids, positions, slots (n * q each), then context_lens (n)
        self.token_staging = torch.zeros((3, n * q), dtype=torch.int64).pin_memory()
        self.context_staging = torch.zeros(n, dtype=torch.int32).pin_memory()
        self.block_staging = torch.zeros((n, max_blocks_per_seq), dtype=torch.int32).pin_memory()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = pool

    def fits(self, host: HostBatch, query_lens: list[int]) -> bool:
        return (
            len(query_lens) <= self.sizes[-1]
            and max(query_lens) <= self.query_len
            and all(len(r) <= self.max_blocks_per_seq for r in host.block_tables)
        )

    def _view(self, size: int) -> ForwardBatch:
        s, q = self.static, self.query_len
        return ForwardBatch(
            input_ids=s.input_ids[: size * q],
            positions=s.positions[: size * q],
            slot_mapping=s.slot_mapping[: size * q],
            block_tables=s.block_tables[:size],
            cu_query_lens=s.cu_query_lens[: size + 1],
            context_lens=s.context_lens[:size],
            logits_indices=s.logits_indices[: size * q],
        )

    @torch.inference_mode()
    def capture(self) -> Any:
        """Capture every size, largest first (smaller graphs reuse its pool); returns the pool."""
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
        return self.pool

    def run(self, host: HostBatch, query_lens: list[int]) -> torch.Tensor:
        """Replay for a step whose sequence i runs query_lens[i] tokens (host rows in order);
        returns logits of the real rows, [sum(query_lens), vocab]."""
        n, q = len(query_lens), self.query_len
        size = next(s for s in self.sizes if s >= n)
        tokens = self.token_staging
        tokens[:, : size * q].zero_()
        tokens[2, : size * q] = -1
        self.context_staging[:size].zero_()
        if q == 1:
            rows = list(range(n))
            tokens[0, :n] = torch.tensor(host.input_ids)
            tokens[1, :n] = torch.tensor(host.positions)
            tokens[2, :n] = torch.tensor(host.slot_mapping)
            self.context_staging[:n] = torch.tensor(host.context_lens)
        else:
            rows = [i * q + j for i, length in enumerate(query_lens) for j in range(length)]
            index = torch.tensor(rows)
            tokens[0, index] = torch.tensor(host.input_ids)
            tokens[1, index] = torch.tensor(host.positions)
            tokens[2, index] = torch.tensor(host.slot_mapping)
            pad = torch.tensor([q - length for length in query_lens], dtype=torch.int32)
            self.context_staging[:n] = torch.tensor(host.context_lens, dtype=torch.int32) + pad
        width = max(len(r) for r in host.block_tables)
        self.block_staging[:n, :width] = padded_block_table(host.block_tables, width)
        s = self.static
        s.input_ids[: size * q].copy_(tokens[0, : size * q], non_blocking=True)
        s.positions[: size * q].copy_(tokens[1, : size * q], non_blocking=True)
        s.slot_mapping[: size * q].copy_(tokens[2, : size * q], non_blocking=True)
        s.context_lens[:size].copy_(self.context_staging[:size], non_blocking=True)
        s.block_tables[:n, :width].copy_(self.block_staging[:n, :width], non_blocking=True)
        self.graphs[size].replay()
        if q == 1:
            return self.outputs[size][:n]
        return self.outputs[size][torch.tensor(rows, device=s.input_ids.device)]
