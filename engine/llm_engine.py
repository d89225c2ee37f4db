"""The step loop over token-level requests: schedule -> run model -> sample -> update.

The engine takes already-tokenized Requests; text in and text out live in `engine.llm`.
Call order per step: schedule(), execute(), sampler, update(), stop strings, completions.

Overlapped scheduling (on by default on CUDA; with speculative decoding only while it is
switched off for a large batch): the host does not
wait for step N's sampled tokens before scheduling and launching step N+1. Each sequence that
sampled in step N gets a PENDING_TOKEN; step N+1 reads those tokens on the device, and while it
runs, the host reads step N's tokens, puts them in place and applies the stop rules. A sequence
that stops at step N (EOS, stop token or string) has already been given a row in step N+1; that
row's token is dropped. max_tokens is known in advance, so those sequences are not scheduled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from engine.config import EngineConfig
from engine.kv_cache_manager import KVCacheManager
from engine.metrics import RunMetrics
from engine.model_runner import ModelRunner, PendingInputs
from engine.output_processor import OutputProcessor, error_completion
from engine.outputs import Completion
from engine.request import PENDING_TOKEN, FinishReason, Request, Sequence
from engine.sampler import Sampler
from engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from engine.spec.decoder import SpeculativeDecoder
from engine.spec.proposer import Proposer


@dataclass
class _InFlight:
    """A launched step whose sampled tokens the host has not read yet."""

    sampling: list[ScheduledChunk]
    logits: torch.Tensor
    tokens: torch.Tensor  # [len(sampling)] on the device
    tokens_host: torch.Tensor  # its copy (pinned on CUDA), valid once ready has passed
    ready: torch.cuda.Event | None
    rows: dict[int, int]  # id(seq) -> its row in tokens


def _logit_rows(chunks: list[ScheduledChunk]) -> list[tuple[ScheduledChunk, int, int]]:
    """(chunk, first logits row, number of rows) per sampling chunk: 1 + len(drafts) rows."""
    rows, row = [], 0
    for chunk in chunks:
        n = 1 + len(chunk.draft_token_ids)
        rows.append((chunk, row, n))
        row += n
    return rows


def _argmax_only(chunks: list[ScheduledChunk]) -> bool:
    """Whether a step's sampled rows need only an argmax: greedy requests without logprobs
    (their logits may stay in the model's dtype)."""
    return all(
        c.seq.request.sampling_params.greedy and c.seq.request.sampling_params.logprobs is None
        for c in chunks
    )


class LLMEngine:
    def __init__(
        self,
        config: EngineConfig,
        runner: ModelRunner,
        num_blocks: int,
        output_processor: OutputProcessor,
        eos_token_ids: frozenset[int],
        proposer: Proposer | None = None,
    ) -> None:
        self.config = config
        self.runner = runner
        self.kv_cache = KVCacheManager(
            num_blocks, config.cache.block_size, config.cache.enable_prefix_caching
        )
        self.scheduler = Scheduler(config.scheduler, self.kv_cache, eos_token_ids)
        self.sampler = Sampler(torch.device(config.device), config.seed)
        self.output_processor = output_processor
        self.metrics = RunMetrics(num_blocks=num_blocks)
        self.speculator: SpeculativeDecoder | None = None
        if config.speculative is not None:
            assert proposer is not None, "a speculative config needs a proposer"
            self.speculator = SpeculativeDecoder(
                config.speculative,
                proposer,
                self.sampler.generator,
                config.model.max_model_len,
                self.metrics,
            )
        overlap = config.overlap_scheduling
        if overlap is None:
            overlap = config.device.startswith("cuda")
        # With speculative decoding, only the steps where it is switched off overlap: a verify
        # step needs the previous tokens on the host to propose.
        self.overlap = overlap
        self._inflight: _InFlight | None = None

    @property
    def max_model_len(self) -> int:
        return self.config.model.max_model_len

    @property
    def num_unfinished(self) -> int:
        return self.scheduler.num_unfinished

    def add_request(self, request: Request) -> Completion | None:
        """Queue a request. Returns an error Completion at once (queuing nothing) when the request
        can never run; otherwise None, and its Completion comes out of a later step()."""
        error = self._check(request)
        self.metrics.num_requests += 1
        if error is not None:
            self.metrics.num_errors += 1
            return error_completion(
                request.request_id, request.arrival_index, error, request.prompt_token_ids
            )
        self.metrics.num_prompt_tokens += len(request.prompt_token_ids)
        self.scheduler.add(Sequence.from_request(request))
        return None

    def _check(self, request: Request) -> str | None:
        num_prompt = len(request.prompt_token_ids)
        max_tokens = request.sampling_params.max_tokens
        if num_prompt == 0:
            return "prompt: empty (0 tokens)"
        vocab = self.config.model.vocab_size
        bad = next((t for t in request.prompt_token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            return f"prompt_token_ids: token id {bad} is outside the vocabulary [0, {vocab})"
        if num_prompt + max_tokens > self.max_model_len:
            return (
                f"prompt: {num_prompt} prompt tokens + max_tokens {max_tokens} exceed the "
                f"model's context of {self.max_model_len} tokens"
            )
        block_size = self.config.cache.block_size
        if self.kv_cache.blocks_needed(num_prompt + max_tokens) > self.kv_cache.num_blocks:
            return (
                f"prompt: {num_prompt} prompt tokens + max_tokens {max_tokens} exceed the whole "
                f"KV cache ({self.kv_cache.num_blocks * block_size} tokens)"
            )
        return None

    def abort_all(self) -> int:
        """Drop every unfinished request (their blocks go back to the pool); returns how many.
        Used when a caller abandons a stream."""
        self.drain()
        seqs = list(self.scheduler.waiting) + list(self.scheduler.running)
        for seq in seqs:
            self.scheduler.abort(seq)
            if self.speculator is not None:
                self.speculator.proposer.release(seq)
        return len(seqs)

    def step(self) -> list[Completion]:
        """Run one step; returns the requests that finished in it (with overlapped scheduling:
        the requests whose finishing token was read in it)."""
        if self.overlap and not (
            self.speculator is not None and self.speculator.would_draft(self.scheduler.running)
        ):
            if self.speculator is not None:
                self.speculator.propose(self.scheduler.running)  # off: counts it, logs a switch
            return self._step_overlapped()
        drained = self.drain()
        return drained + self._step_one()

    def _step_one(self) -> list[Completion]:
        """A step whose tokens are read before it returns (verify steps, or overlap off)."""
        started = time.perf_counter()
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        out = self.scheduler.schedule()
        if out.is_empty:
            assert not self.scheduler.running, "running sequences but nothing scheduled"
            return []
        blocks_used = self.kv_cache.pool.num_used_blocks
        sampling = [c for c in out.chunks if c.sample]
        logits = self.runner.execute(out, float_logits=not _argmax_only(sampling))
        new_tokens = self._sample(sampling, logits)
        outputs_before = sum(c.seq.num_output_tokens for c in sampling)
        finished = self.scheduler.update(out, new_tokens)
        # tokens kept: verified drafts after a stop token are dropped by update()
        num_generated = sum(c.seq.num_output_tokens for c in sampling) - outputs_before
        for chunk in sampling:
            seq = chunk.seq
            if self.output_processor.find_stop_string(seq):
                if seq.is_finished:
                    seq.finish_reason = FinishReason.STOP
                else:
                    self.scheduler.finish(seq, FinishReason.STOP)
                    finished.append(seq)
        for seq in finished:
            if self.speculator is not None:
                self.speculator.proposer.release(seq)
        self._record(out, num_generated, blocks_used, started)
        return [self.output_processor.completion(seq) for seq in finished]

    def drain(self) -> list[Completion]:
        """Read the tokens of a launched step, if any (overlapped scheduling); returns the
        requests they finished. Afterwards no token is pending."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return []
        return self._read_inflight(inflight)

    def _step_overlapped(self) -> list[Completion]:
        started = time.perf_counter()
        previous = self._inflight
        out = self.scheduler.schedule()
        self._inflight = None
        if not out.is_empty:
            blocks_used = self.kv_cache.pool.num_used_blocks
            pending = self._pending_inputs(out, previous)
            sampling = [c for c in out.chunks if c.sample]
            logits = self.runner.execute(out, pending, float_logits=not _argmax_only(sampling))
            seqs = [c.seq for c in sampling]
            tokens = self.sampler.sample_on_device(logits, seqs)
            ready = None
            if tokens.is_cuda:
                tokens_host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
                tokens_host.copy_(tokens, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            else:
                tokens_host = tokens
            for seq in seqs:
                seq.token_ids.append(PENDING_TOKEN)
            self._inflight = _InFlight(
                sampling,
                logits,
                tokens,
                tokens_host,
                ready,
                {id(s): i for i, s in enumerate(seqs)},
            )
            self._record(out, 0, blocks_used, started)
        elif previous is None:
            assert not self.scheduler.running, "running sequences but nothing scheduled"
        return self._read_inflight(previous) if previous is not None else []

    def _pending_inputs(
        self, out: SchedulerOutput, previous: _InFlight | None
    ) -> PendingInputs | None:
        """Where this step's pending input tokens come from: the previous step's samples."""
        rows, sources = [], []
        row = 0
        for chunk in out.chunks:
            seq = chunk.seq
            if seq.token_ids[chunk.start + chunk.num_tokens - 1] == PENDING_TOKEN:
                assert previous is not None and chunk.num_tokens == 1
                rows.append(row)
                sources.append(previous.rows[id(seq)])
            row += chunk.num_tokens
        if not rows:
            return None
        assert previous is not None
        return PendingInputs(rows, sources, previous.tokens)

    def _read_inflight(self, inflight: _InFlight) -> list[Completion]:
        if inflight.ready is not None:
            inflight.ready.synchronize()
        ids = inflight.tokens_host.tolist()
        seqs = [c.seq for c in inflight.sampling]
        logprobs = self.sampler.logprobs(inflight.logits, seqs, ids)
        finished = []
        num_generated = 0
        for chunk, token_id, logprob in zip(inflight.sampling, ids, logprobs, strict=True):
            seq = chunk.seq
            if seq.is_finished:  # stopped at the step before (its row here was spare) or aborted
                continue
            num_generated += 1
            if logprob is not None:
                seq.logprobs.append(logprob)
            if self.scheduler.resolve(chunk, token_id) is not None:
                finished.append(seq)
            elif self.output_processor.find_stop_string(seq):
                self.scheduler.finish(seq, FinishReason.STOP)
                finished.append(seq)
        self.metrics.num_generated_tokens += num_generated
        if self.speculator is not None:
            for seq in finished:
                self.speculator.proposer.release(seq)
        return [self.output_processor.completion(seq) for seq in finished]

    def _sample(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> list[list[int]]:
        """New tokens per sampling chunk: one sampled token, or for a chunk with drafts the
        verified tokens. logits rows follow the chunks (1 + len(drafts) rows each)."""
        if not any(c.draft_token_ids for c in chunks):
            sampled = self.sampler(logits, [c.seq for c in chunks])
            for chunk, logprob in zip(chunks, sampled.logprobs, strict=True):
                if logprob is not None:
                    chunk.seq.logprobs.append(logprob)
            return [[t] for t in sampled.token_ids]
        assert self.speculator is not None
        if _argmax_only(chunks):
            return self._verify_greedy(chunks, logits)
        plain_rows, spec_rows = [], []
        plain, spec = [], []
        for chunk, row, n in _logit_rows(chunks):
            if chunk.draft_token_ids:
                spec.append(chunk)
                spec_rows.append(logits[row : row + n])
            else:
                plain.append(chunk)
                plain_rows.append(row)
        results: dict[int, list[int]] = {}
        if plain:
            sampled = self.sampler(logits[plain_rows], [c.seq for c in plain])
            for chunk, token, logprob in zip(
                plain, sampled.token_ids, sampled.logprobs, strict=True
            ):
                results[id(chunk)] = [token]
                if logprob is not None:
                    chunk.seq.logprobs.append(logprob)
        for chunk, tokens in zip(spec, self.speculator.verify(spec, spec_rows), strict=True):
            results[id(chunk)] = tokens
        return [results[id(c)] for c in chunks]

    def _verify_greedy(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> list[list[int]]:
        """_sample for a step of greedy chunks that want no logprobs: one argmax over every
        row and one copy to the host, instead of a sampler pass and a rejection-sampler pass."""
        assert self.speculator is not None
        argmax = logits.argmax(dim=-1).tolist()
        spec, spec_argmax = [], []
        plain_tokens: list[list[int]] = []
        for chunk, row, n in _logit_rows(chunks):
            if chunk.draft_token_ids:
                spec.append(chunk)
                spec_argmax.append(argmax[row : row + n])
            plain_tokens.append([argmax[row]])
        verified = iter(self.speculator.verify_greedy(spec, spec_argmax))
        return [
            next(verified) if c.draft_token_ids else t
            for c, t in zip(chunks, plain_tokens, strict=True)
        ]

    def _record(
        self, out: SchedulerOutput, num_generated: int, blocks_used: int, started: float
    ) -> None:
        m = self.metrics
        m.num_steps += 1
        m.num_computed_tokens += out.num_tokens
        m.num_cached_prompt_tokens += out.num_cached_tokens
        m.num_preemptions += len(out.preempted)
        m.num_generated_tokens += num_generated
        m.peak_blocks_used = max(m.peak_blocks_used, blocks_used)
        plan = self.runner.last_shared_prefix
        if plan is not None:
            m.num_shared_prefix_steps += 1
            m.num_shared_prefix_saved_tokens += plan.saved_tokens
        elapsed = time.perf_counter() - started
        if out.num_prefill_tokens:
            m.prefill_seconds += elapsed
        else:
            m.decode_seconds += elapsed
