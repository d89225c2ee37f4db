"""Continuous batching: each step, decide which sequences run how many tokens. No tensors here.

Policy per step, with a budget of max_num_batched_tokens:
  1. running sequences that are decoding (one new token each), oldest first;
  2. running sequences still in prefill, a chunk each as the budget allows (chunked prefill);
  3. waiting sequences, oldest first, while the budget, max_num_seqs and free blocks allow;
     a sequence entering for the first time reuses its prompt's cached prefix blocks.
When a running sequence cannot get a block, the newest running sequence is preempted: its blocks
are freed and it goes back to the front of the waiting queue, to be recomputed later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_tables import BlockTables
from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import PENDING_TOKEN, FinishReason, Sequence, SequenceStatus


@dataclass(slots=True)  # not frozen: a step creates one per sequence, 3x faster this way
class ScheduledChunk:
    """seq runs positions [start, start + num_tokens): its own tokens, then draft_token_ids
    (speculative decoding: proposed tokens to verify). sample is True when the chunk reaches
    the end of the sequence, so the next token(s) get sampled. Not changed once scheduled."""

    seq: Sequence
    start: int
    num_tokens: int
    draft_token_ids: tuple[int, ...] = ()

    @property
    def sample(self) -> bool:
        return self.start + self.num_tokens == self.seq.num_tokens + len(self.draft_token_ids)


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens newly served from the prefix cache this step
    block_tables: BlockTables | None = None  # the chunks' block ids as rows (else from lists)
    # False when no block is held by two sequences: no shared prefix to plan for.
    any_shared_blocks: bool = True

    @property
    def is_empty(self) -> bool:
        return not self.chunks

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks if c.start < c.seq.num_prompt_tokens)


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        kv_cache: KVCacheManager,
        eos_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; the caller has checked it can ever fit in the cache."""
        assert seq.status is SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's chunks and advance each chosen sequence's num_computed_tokens."""
        out = SchedulerOutput(block_tables=self.kv_cache.tables)
        budget = self.config.max_num_batched_tokens
        decoding = [s for s in self.running if s.num_computed_tokens >= s.num_prompt_tokens]
        prefilling = [s for s in self.running if s.num_computed_tokens < s.num_prompt_tokens]
        for seq in decoding + prefilling:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            if seq.num_output_tokens >= seq.request.sampling_params.max_tokens:
                continue  # its last token is pending (overlapped steps): it finishes on reading
            num_real = seq.num_tokens - seq.num_computed_tokens
            drafts = seq.draft_token_ids if num_real == 1 else []
            seq.draft_token_ids = []
            num_new = min(num_real + len(drafts), budget)
            if num_new == 0:
                continue
            drafts = drafts[: max(0, num_new - num_real)]
            if not self._allocate_or_preempt(seq, num_new, out):
                continue
            out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, num_new, tuple(drafts)))
            seq.num_computed_tokens += num_new
            budget -= num_new
        if not out.preempted:
            budget = self._admit_waiting(budget, out)
        out.any_shared_blocks = self.kv_cache.pool.num_shared_blocks > 0
        return out

    def _allocate_or_preempt(self, seq: Sequence, num_new: int, out: SchedulerOutput) -> bool:
        """Allocate slots for seq, preempting the newest other running sequences as needed.
        Returns False if seq itself had to be preempted."""
        while not self.kv_cache.allocate_slots(seq, num_new):
            scheduled = {id(c.seq) for c in out.chunks}
            victims = [s for s in self.running if s is not seq and id(s) not in scheduled]
            victim = victims[-1] if victims else seq
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _admit_waiting(self, budget: int, out: SchedulerOutput) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            cached = self.kv_cache.find_cached_prefix(seq) if not seq.block_ids else []
            num_cached = len(cached) * self.kv_cache.block_size
            num_new = min(seq.num_tokens - seq.num_computed_tokens - num_cached, budget)
            if not self.kv_cache.allocate_slots(seq, num_new, cached):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = num_cached
                out.num_cached_tokens += num_cached
            seq.num_computed_tokens += num_cached
            out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, num_new))
            seq.num_computed_tokens += num_new
            budget -= num_new
        return budget

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.kv_cache.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def update(self, out: SchedulerOutput, sampled_token_ids: list[list[int]]) -> list[Sequence]:
        """Append the new tokens of each chunk with sample=True (in chunk order: one token, or
        for a chunk with drafts the accepted drafts plus one), roll back the KV of rejected
        drafts (freeing blocks left empty), apply the stop rules that need no text
        (max_tokens, EOS, stop token ids; tokens after a stop are dropped), and return the
        sequences that finished. Must follow the schedule() that produced out."""
        finished = []
        sampling = [c for c in out.chunks if c.sample]
        assert len(sampling) == len(sampled_token_ids)
        for chunk, token_ids in zip(sampling, sampled_token_ids, strict=True):
            seq = chunk.seq
            num_rejected = len(chunk.draft_token_ids) - (len(token_ids) - 1)
            assert 0 <= num_rejected <= len(chunk.draft_token_ids)
            if chunk.draft_token_ids:
                seq.num_computed_tokens -= num_rejected
                self.kv_cache.trim(seq, seq.num_computed_tokens)
            for token_id in token_ids:
                seq.token_ids.append(token_id)
                reason = self._stop_reason(seq, token_id)
                if reason is not None:
                    self.finish(seq, reason)
                    finished.append(seq)
                    break
        return finished

    def abort(self, seq: Sequence) -> None:
        """Remove an unfinished sequence, waiting or running, and free its blocks."""
        if seq in self.waiting:
            self.waiting.remove(seq)
            self.kv_cache.free(seq)
            seq.status = SequenceStatus.FINISHED
            seq.finish_reason = FinishReason.ERROR
        else:
            self.finish(seq, FinishReason.ERROR)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence now, running or (preempted while its last token was pending) waiting,
        drop a pending token and free its blocks (idempotent)."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.num_pending_tokens:
            del seq.token_ids[-seq.num_pending_tokens :]
        self.kv_cache.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _stop_reason(
        self, seq: Sequence, token_id: int, num_output_tokens: int | None = None
    ) -> FinishReason | None:
        """Why seq stops after token_id, its num_output_tokens-th output token (default: the
        last of token_ids)."""
        params = seq.request.sampling_params
        if token_id in params.stop_token_ids:
            return FinishReason.STOP
        if not params.ignore_eos and token_id in self.eos_token_ids:
            return FinishReason.STOP
        if num_output_tokens is None:
            num_output_tokens = seq.num_output_tokens
        if num_output_tokens >= params.max_tokens:
            return FinishReason.LENGTH
        return None

    def resolve(self, chunk: ScheduledChunk, token_id: int) -> FinishReason | None:
        """Overlapped steps: put the token read from the device in place of the pending one
        that chunk sampled; if seq stops there, finish it (dropping a later pending token) and
        return why. The caller skips sequences that finished or were aborted meanwhile."""
        seq = chunk.seq
        position = chunk.start + chunk.num_tokens
        assert seq.token_ids[position] == PENDING_TOKEN
        seq.token_ids[position] = token_id
        reason = self._stop_reason(seq, token_id, position + 1 - seq.num_prompt_tokens)
        if reason is not None:
            self.finish(seq, reason)
        return reason
