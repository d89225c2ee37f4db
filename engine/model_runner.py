"""Turns a schedule into flat tensors, runs the model over the paged KV cache, returns logits.
No policy: which tokens run is decided by the scheduler. On CUDA, decode-only steps replay a
CUDA graph captured for the next padded batch size (see engine/cuda_graphs.py). Decode steps
where many sequences hold the same prefix blocks attend those once per tile of sequences
(engine/shared_prefix.py), with graphs of their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.block_tables import BlockTables
from engine.config import CacheConfig, KVCacheDtype, ModelConfig
from engine.forward_batch import ForwardBatch, LayerKVCache
from engine.models.llama import LlamaForCausalLM
from engine.request import PENDING_TOKEN, Sequence
from engine.scheduler import SchedulerOutput
from engine.shared_prefix import SharedPrefixPlan, plan_shared_prefix
from kernels.kv_store import allocate_kv_cache, allocate_kv_scales
from kernels.shared_prefix import SharedPrefix

# Shared-prefix tiling: about 64 query rows (sequences x query heads of one KV head) per tile,
# and at most this many groups of sequences per step (the largest savings win).
SHARED_PREFIX_TILE_ROWS = 64
SHARED_PREFIX_MAX_GROUPS = 32

if TYPE_CHECKING:
    from engine.cuda_graphs import StepGraphs


def kv_bytes_per_block(model: ModelConfig, cache: CacheConfig, dtype: torch.dtype) -> int:
    """Bytes one block takes over all layers, keys and values (and INT8 scales)."""
    if cache.kv_cache_dtype is KVCacheDtype.INT8:
        per_token_head = model.head_dim + 4  # int8 codes + one fp32 scale
    else:
        per_token_head = model.head_dim * (torch.finfo(dtype).bits // 8)
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
    int8 = cache.kv_cache_dtype is KVCacheDtype.INT8
    cache_dtype = torch.int8 if int8 else dtype
    shape = (num_blocks, cache.block_size, model.num_key_value_heads, model.head_dim)
    layers = []
    for _ in range(model.num_hidden_layers):
        k_cache, v_cache = allocate_kv_cache(*shape, cache_dtype, device)
        if int8:
            k_scale, v_scale = allocate_kv_scales(*shape[:3], device)
            layers.append(LayerKVCache(k_cache, v_cache, k_scale=k_scale, v_scale=v_scale))
        else:
            layers.append(LayerKVCache(k_cache=k_cache, v_cache=v_cache))
    return layers


@dataclass
class PendingInputs:
    """Input rows whose token is still on the device: rows[i] of this step's input_ids takes
    tokens[sources[i]], tokens being the previous step's sampled ids (device tensor)."""

    rows: list[int]
    sources: list[int]
    tokens: torch.Tensor

    def fill(self, input_ids: torch.Tensor, row_map: list[int] | None = None) -> None:
        """Copy the tokens into input_ids; row_map[r] is where flat row r sits there (CUDA
        graphs pad each sequence to the same number of rows)."""
        device = input_ids.device
        rows_list = self.rows if row_map is None else [row_map[r] for r in self.rows]
        first = list(range(len(rows_list)))
        if rows_list == first and self.sources == first:
            # A decode step over the previous step's sequences in the same order: a slice,
            # without sending two index lists to the device.
            input_ids[: len(first)] = self.tokens[: len(first)].to(input_ids.dtype)
            return
        rows = torch.tensor(rows_list).to(device, non_blocking=True)
        sources = torch.tensor(self.sources).to(device, non_blocking=True)
        input_ids[rows] = self.tokens[sources].to(input_ids.dtype)


@dataclass
class HostBatch:
    """A ForwardBatch's contents on the host, before the copy to the device."""

    input_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    cu_query_lens: list[int]
    context_lens: list[int]
    logits_indices: list[int]
    seqs: list[Sequence] = field(default_factory=list)  # one per sequence, in order
    tables: BlockTables | None = None  # where the rows are kept as one array, if anywhere
    _table: np.ndarray | None = None

    def token_columns(self) -> np.ndarray:
        """input_ids, positions and slot_mapping as the rows of one int64 array, for one copy
        to the device (three torch.tensor calls on a 16k-token step's lists took 2.6 ms on a
        CPU box, this 0.8). Rows are padded with zeros to a multiple of 16 entries, so each
        row's view on the device starts 128-byte aligned (Triton compiles a kernel per
        pointer alignment)."""
        n = len(self.input_ids)
        columns = np.zeros((3, -(-n // 16) * 16), dtype=np.int64)
        columns[0, :n] = self.input_ids
        columns[1, :n] = self.positions
        columns[2, :n] = self.slot_mapping
        return columns

    def num_leading_decodes(self) -> int:
        """How many sequences from the first have one query row each."""
        cu = self.cu_query_lens
        n = 0
        while n + 1 < len(cu) and cu[n + 1] - cu[n] == 1:
            n += 1
        return n

    def block_table(self) -> np.ndarray:
        """The sequences' block ids as one [num_seqs, longest] int32 array (built once)."""
        if self._table is None:
            width = max(len(seq.block_ids) for seq in self.seqs)
            if self.tables is not None:
                self._table = self.tables.gather(self.seqs, width)
            if self._table is None:
                self._table = padded_block_table_np([s.block_ids for s in self.seqs], width)
        return self._table


def build_host_batch(out: SchedulerOutput, block_size: int) -> HostBatch:
    batch = HostBatch([], [], [], [0], [], [], tables=out.block_tables)
    cu = batch.cu_query_lens
    for chunk in out.chunks:
        seq, start, end = chunk.seq, chunk.start, chunk.start + chunk.num_tokens
        batch.seqs.append(seq)
        block_ids = seq.block_ids
        if end == start + 1 and not chunk.draft_token_ids:  # a decode: most rows, kept cheap
            batch.input_ids.append(seq.token_ids[start])
            batch.positions.append(start)
            batch.slot_mapping.append(
                block_ids[start // block_size] * block_size + start % block_size
            )
            cu.append(cu[-1] + 1)
            batch.context_lens.append(end)
            if end == seq.num_tokens:  # chunk.sample
                batch.logits_indices.append(cu[-1] - 1)
            continue
        batch.input_ids.extend(seq.token_ids[start:end])
        batch.input_ids.extend(chunk.draft_token_ids)
        batch.positions.extend(range(start, end))
        # The slots of the blocks the chunk touches, then its span of them (an expression per
        # token: host batch 1.9 ms instead of 1.0 for a 16k-token prompt step, CPU box).
        first_block = start // block_size
        ids = np.asarray(block_ids[first_block : -(-end // block_size)], dtype=np.int64)
        slots = (ids[:, None] * block_size + np.arange(block_size)).ravel()
        offset = start - first_block * block_size
        batch.slot_mapping.extend(slots[offset : offset + end - start].tolist())
        batch.cu_query_lens.append(batch.cu_query_lens[-1] + chunk.num_tokens)
        batch.context_lens.append(end)
        if chunk.sample:  # a chunk with drafts is scored at every draft and after the last
            first = batch.cu_query_lens[-1] - 1 - len(chunk.draft_token_ids)
            batch.logits_indices.extend(range(first, batch.cu_query_lens[-1]))
    return batch


def padded_block_table_np(rows: list[list[int]], width: int) -> np.ndarray:
    """[len(rows), width] int32, each row right-padded with block 0 (never read: context_lens
    bounds every read). Filled through numpy: a nested-list torch.tensor is ~10x slower."""
    table = np.zeros((len(rows), width), dtype=np.int32)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table


def seqs_per_tile(model: LlamaForCausalLM) -> int:
    """Sequences per shared-prefix tile: ~SHARED_PREFIX_TILE_ROWS rows of query heads."""
    group = model.config.num_attention_heads // model.config.num_key_value_heads
    group_pad = 1 << (group - 1).bit_length()
    return max(1, SHARED_PREFIX_TILE_ROWS // group_pad)


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[LayerKVCache],
        block_size: int,
        device: torch.device,
        shared_prefix: bool = False,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.graphs: list[StepGraphs] = []  # by query length, set by enable_cuda_graphs
        self.shared_prefix = shared_prefix  # plan shared-prefix attention for decode steps
        self.seqs_per_tile = seqs_per_tile(model)
        self.last_shared_prefix: SharedPrefixPlan | None = None  # the last step's plan

    def enable_cuda_graphs(self, families: list[tuple[int, int]], max_blocks_per_seq: int) -> None:
        """Capture graphs for each (query_len, max_batch_size) family: (1, B) for decode steps,
        (k + 1, B') for speculative verify steps; with shared-prefix attention on, decode steps
        get a second family that runs it."""
        from engine.cuda_graphs import SharedPrefixTiling, StepGraphs

        variants: list[tuple[int, int, SharedPrefixTiling | None]] = [
            (q, b, None) for q, b in sorted(families)
        ]
        if self.shared_prefix:
            tiling = SharedPrefixTiling(self.seqs_per_tile, SHARED_PREFIX_MAX_GROUPS)
            variants += [(q, b, tiling) for q, b in sorted(families) if q == 1]
        pool = None
        for query_len, max_batch_size, tiling_or_none in variants:
            graphs = StepGraphs(
                self.model,
                self.kv_caches,
                max_batch_size,
                max_blocks_per_seq,
                query_len,
                pool,
                tiling_or_none,
            )
            pool = graphs.capture()
            self.graphs.append(graphs)

    def plan_shared_prefix(self, host: HostBatch) -> SharedPrefixPlan | None:
        return plan_shared_prefix(
            host.block_table(),
            np.asarray(host.context_lens),
            self.block_size,
            self.seqs_per_tile,
            SHARED_PREFIX_MAX_GROUPS,
        )

    def shared_prefix_tensors(self, plan: SharedPrefixPlan) -> SharedPrefix:
        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device, non_blocking=False)

        return SharedPrefix(
            prefix_lens=dev(plan.prefix_lens),
            seq_order=dev(plan.seq_order),
            tile_leader=dev(plan.tile_leader),
            tile_prefix_len=dev(plan.tile_prefix_len),
            tile_first=dev(plan.tile_first),
            tile_count=dev(plan.tile_count),
            seqs_per_tile=self.seqs_per_tile,
        )

    def prepare(self, host: HostBatch) -> ForwardBatch:
        """Copy a host batch to the device as a ForwardBatch."""
        pin = self.device.type == "cuda"

        def dev(values: list[int] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
            if pin:
                t = t.pin_memory()
            return t.to(self.device, non_blocking=True)

        n = len(host.input_ids)
        columns = dev(torch.from_numpy(host.token_columns()), torch.int64)
        return ForwardBatch(
            input_ids=columns[0, :n],
            positions=columns[1, :n],
            slot_mapping=columns[2, :n],
            block_tables=dev(torch.from_numpy(host.block_table()), torch.int32),
            cu_query_lens=dev(host.cu_query_lens, torch.int32),
            context_lens=dev(host.context_lens, torch.int32),
            logits_indices=dev(host.logits_indices, torch.int64),
            num_decode_seqs=host.num_leading_decodes(),
        )

    @torch.inference_mode()
    def execute(
        self,
        out: SchedulerOutput,
        pending: PendingInputs | None = None,
        float_logits: bool = True,
    ) -> torch.Tensor:
        """Run one step; returns logits [num_rows, vocab_size] in chunk order: one row per
        sampling chunk, 1 + len(drafts) rows for a chunk with drafts; fp32, or the model's
        dtype without float_logits (enough for an argmax: the fp32 copy is exact, and at a
        128k vocabulary and 512 rows it writes 263 MB). pending supplies the input tokens that
        the previous step sampled and the host has not read yet (they are PENDING_TOKEN in
        the host batch), copied on the device."""
        host = build_host_batch(out, self.block_size)
        num_pending = host.input_ids.count(PENDING_TOKEN)
        assert num_pending == (len(pending.rows) if pending is not None else 0), (
            "a pending input token has no source"
        )
        # Every chunk ends at its sequence's end (decodes, verify steps with drafts, a draft
        # model's catch-up): a step a graph family with enough query rows can replay.
        uniform = all(c.sample for c in out.chunks)
        plan = None
        if (
            self.shared_prefix
            and out.any_shared_blocks
            and uniform
            and all(c.num_tokens == 1 for c in out.chunks)
        ):
            plan = self.plan_shared_prefix(host)
        self.last_shared_prefix = plan
        if self.graphs and uniform:
            query_lens = [c.num_tokens for c in out.chunks]
            num_logits = [1 + len(c.draft_token_ids) for c in out.chunks]
            for graphs in self.graphs:
                if graphs.fits(host, query_lens, plan):
                    hidden = graphs.run(host, query_lens, plan, pending, num_logits)
                    return self.model.compute_logits(hidden, float_logits)
        batch = self.prepare(host)
        if pending is not None:
            pending.fill(batch.input_ids)
        if plan is not None:
            batch.shared_prefix = self.shared_prefix_tensors(plan)
        hidden = self.model(batch, self.kv_caches)
        return self.model.compute_logits(hidden, float_logits)
