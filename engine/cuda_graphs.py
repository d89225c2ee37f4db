"""CUDA graphs for steps where every sequence runs the same number of query tokens q: plain
decode steps (q = 1) and speculative verify steps (q = k + 1: the last token plus k drafts).

One family of graphs per q, one graph per padded batch size, all sharing one memory pool. A step
of n sequences replays the smallest captured size >= n. Each sequence owns q query rows; a
sequence with fewer tokens (fewer drafts) is padded to q with rows that write nothing (slot -1)
and are placed after its real rows, and its context length is extended by the padding so that
its real rows keep their positions (query row j sits at context_len - q + j). Padding sequences
beyond n have context length 0 and see nothing. Logits come back for the real rows only, in
chunk order.

A decode family may run shared-prefix attention (kernels/shared_prefix.py): its graphs read the
plan from fixed-size device arrays, filled each step from the host plan; unused tiles are
marked empty, so a graph captured with no shared prefix replays any plan that fits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.forward_batch import ForwardBatch, LayerKVCache
from engine.model_runner import HostBatch, PendingInputs
from engine.models.llama import LlamaForCausalLM
from engine.shared_prefix import SharedPrefixPlan, max_plan_tiles
from kernels.shared_prefix import SharedPrefix


@dataclass(frozen=True)
class SharedPrefixTiling:
    seqs_per_tile: int
    max_groups: int


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """Padded batch sizes to capture: every 16 up to 512, every 32 above (a step of 16 above
    512 would double the captures for under 3% less padding)."""
    sizes = [1, 2, 4, 8, *range(16, min(max_batch_size, 512) + 1, 16)]
    sizes += range(544, max_batch_size + 1, 32)
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
        shared_prefix: SharedPrefixTiling | None = None,
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
            # q - 1 spare columns: a sequence running fewer than q tokens is padded with rows
            # whose (discarded) attention reads up to q - 1 positions past its context
            block_tables=torch.zeros(
                (n, max_blocks_per_seq + q - 1), dtype=torch.int32, device=device
            ),
            cu_query_lens=torch.arange(0, (n + 1) * q, q, dtype=torch.int32, device=device),
            context_lens=torch.zeros(n, dtype=torch.int32, device=device),
            logits_indices=torch.arange(n * q, dtype=torch.int64, device=device),
        )
        # Pinned host staging, two sets used in turn: the host fills step N+1's while step
        # N's copies may still be queued on the device. A set is reused only after the event
        # recorded behind its copies has passed (the draft model queues its steps back to back,
        # with no read of the device between them).
        # Per set: ids, positions, slots (n * q each); context_lens (n); block tables.
        self._stagings = [
            (
                torch.zeros((3, n * q), dtype=torch.int64).pin_memory(),
                torch.zeros(n, dtype=torch.int32).pin_memory(),
                torch.zeros((n, max_blocks_per_seq), dtype=torch.int32).pin_memory(),
            )
            for _ in range(2)
        ]
        self._copied: list[torch.cuda.Event | None] = [None, None]  # per set: copies done
        self._parity = 0
        self.token_staging, self.context_staging, self.block_staging = self._stagings[0]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = pool
        self.tiling = shared_prefix
        if shared_prefix is not None:
            assert q == 1, "shared-prefix attention runs in decode steps only"
            # one int32 array: prefix_lens [n], seq_order [n], then 4 tile arrays [tiles]
            tiles = self.max_tiles(n)
            self.prefix_static = torch.zeros(2 * n + 4 * tiles, dtype=torch.int32, device=device)
            self.prefix_static[2 * n : 2 * n + tiles] = -1  # tile_leader: every tile unused
            self._prefix_stagings = [
                torch.zeros(2 * n + 4 * tiles, dtype=torch.int32).pin_memory() for _ in range(2)
            ]
            self.prefix_staging = self._prefix_stagings[0]

    def max_tiles(self, size: int) -> int:
        assert self.tiling is not None
        return max_plan_tiles(size, self.tiling.seqs_per_tile, self.tiling.max_groups)

    def _prefix_views(self, buffer: torch.Tensor, size: int) -> list[torch.Tensor]:
        """prefix_lens, seq_order, tile_leader, tile_prefix_len, tile_first, tile_count of a
        size-sequence step, as views of buffer (laid out for the largest size)."""
        n, tiles = self.sizes[-1], self.max_tiles(self.sizes[-1])
        views = [buffer[:size], buffer[n : n + size]]
        for i in range(4):
            start = 2 * n + i * tiles
            views.append(buffer[start : start + self.max_tiles(size)])
        return views

    def fits(
        self, host: HostBatch, query_lens: list[int], plan: SharedPrefixPlan | None = None
    ) -> bool:
        return (
            (plan is None) == (self.tiling is None)
            and len(query_lens) <= self.sizes[-1]
            and max(query_lens) <= self.query_len
            and host.block_table().shape[1] <= self.max_blocks_per_seq
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
            shared_prefix=self._shared_prefix_view(size),
            num_decode_seqs=size if q == 1 else 0,
        )

    def _shared_prefix_view(self, size: int) -> SharedPrefix | None:
        if self.tiling is None:
            return None
        lens, order, leader, prefix_len, first, count = self._prefix_views(self.prefix_static, size)
        return SharedPrefix(
            prefix_lens=lens,
            seq_order=order,
            tile_leader=leader,
            tile_prefix_len=prefix_len,
            tile_first=first,
            tile_count=count,
            seqs_per_tile=self.tiling.seqs_per_tile,
        )

    @torch.inference_mode()
    def capture(self) -> Any:
        """Capture every size, largest first (smaller graphs reuse its pool); returns the pool."""
        for size in reversed(self.sizes):
            batch = self._view(size)
            for _ in range(2):  # warm up (Triton compiles/autotunes outside the capture)
                self.model(batch, self.kv_caches)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            # The graph ends at the final hidden states; logits are computed after the replay.
            # Every graph's output stays allocated in the pool, and fp32 logits of every size
            # (sum of sizes x vocab x 4 bytes: 4.4 GB for a 128k vocabulary) would not fit
            # beside the KV cache; hidden states take 1/30 of that.
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[size] = self.model(batch, self.kv_caches)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
        return self.pool

    def run(
        self,
        host: HostBatch,
        query_lens: list[int],
        plan: SharedPrefixPlan | None = None,
        pending: PendingInputs | None = None,
        num_logits: list[int] | None = None,
    ) -> torch.Tensor:
        """Replay for a step whose sequence i runs query_lens[i] tokens (host rows in order);
        returns the final hidden states of the last num_logits[i] rows of each sequence
        (default: all its rows), in order: [sum(num_logits), hidden_size]."""
        n, q = len(query_lens), self.query_len
        size = next(s for s in self.sizes if s >= n)
        self._parity ^= 1
        copied = self._copied[self._parity]
        if copied is not None:
            copied.synchronize()  # the last copies out of this set have run
        self.token_staging, self.context_staging, self.block_staging = self._stagings[self._parity]
        if self.tiling is not None:
            self.prefix_staging = self._prefix_stagings[self._parity]
        tokens = self.token_staging
        tokens[:, : size * q].zero_()
        tokens[2, : size * q] = -1
        self.context_staging[:size].zero_()
        if q == 1:
            rows = list(range(n))
            tokens[:, :n] = torch.from_numpy(host.token_columns()[:, :n])
            self.context_staging[:n] = torch.from_numpy(np.array(host.context_lens))
        else:
            rows = [i * q + j for i, length in enumerate(query_lens) for j in range(length)]
            index = torch.tensor(rows)
            tokens[0, index] = torch.tensor(host.input_ids)
            tokens[1, index] = torch.tensor(host.positions)
            tokens[2, index] = torch.tensor(host.slot_mapping)
            pad = torch.tensor([q - length for length in query_lens], dtype=torch.int32)
            self.context_staging[:n] = torch.tensor(host.context_lens, dtype=torch.int32) + pad
        table = host.block_table()
        width = table.shape[1]
        self.block_staging[:n, :width] = torch.from_numpy(table)
        if plan is not None:
            self._stage_plan(plan, n, size)
        s = self.static
        s.input_ids[: size * q].copy_(tokens[0, : size * q], non_blocking=True)
        s.positions[: size * q].copy_(tokens[1, : size * q], non_blocking=True)
        s.slot_mapping[: size * q].copy_(tokens[2, : size * q], non_blocking=True)
        s.context_lens[:size].copy_(self.context_staging[:size], non_blocking=True)
        s.block_tables[:n, :width].copy_(self.block_staging[:n, :width], non_blocking=True)
        if plan is not None:
            self.prefix_static.copy_(self.prefix_staging, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self._copied[self._parity] = copied
        if pending is not None:
            pending.fill(s.input_ids, rows)
        self.graphs[size].replay()
        if q == 1:
            return self.outputs[size][:n]
        out_rows = rows
        if num_logits is not None:
            out_rows = [
                i * q + j
                for i, (length, wanted) in enumerate(zip(query_lens, num_logits, strict=True))
                for j in range(length - wanted, length)
            ]
        return self.outputs[size][torch.tensor(out_rows, device=s.input_ids.device)]

    def _stage_plan(self, plan: SharedPrefixPlan, n: int, size: int) -> None:
        """Write plan into the pinned staging array (copied to the device before replay)."""
        lens, order, *tile_arrays = (
            v.numpy() for v in self._prefix_views(self.prefix_staging, size)
        )
        lens[:] = 0
        lens[:n] = plan.prefix_lens
        order[:n] = plan.seq_order
        used = plan.num_tiles
        sources = (plan.tile_leader, plan.tile_prefix_len, plan.tile_first, plan.tile_count)
        for dst, src in zip(tile_arrays, sources, strict=True):
            dst[:used] = src[:used]
        tile_arrays[0][used:] = -1  # tile_leader: the rest unused
