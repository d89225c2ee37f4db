"""Speculative decoding inside the engine step: propose drafts for decoding sequences before
scheduling, verify them from the target's logits after the step, keep the counters.

Adaptive, twice over: drafts are proposed only while 1..max_batch_size sequences decode (past
that a step is compute-bound and the target would pay for every rejected draft; switches are
logged), and a step's drafts are verified only when the tokens they are expected to add pay for
the wider step: the expectation uses each sequence's own acceptance so far (a per-draft
acceptance a gives a + a^2 + ... + a^d expected tokens for d drafts) against the configured cost
of a verify step relative to a plain one. Both depend only on the sequences' tokens, never on
timing, so a seeded run repeats exactly.
"""

from __future__ import annotations

import logging
import time

import torch

from engine.config import SpeculativeConfig
from engine.metrics import RunMetrics
from engine.request import Sequence, TokenLogprob
from engine.scheduler import ScheduledChunk
from engine.spec.proposer import Proposer
from engine.spec.rejection_sampler import RejectionSampler

logger = logging.getLogger(__name__)


class SpeculativeDecoder:
    def __init__(
        self,
        config: SpeculativeConfig,
        proposer: Proposer,
        generator: torch.Generator,
        max_model_len: int,
        metrics: RunMetrics,
    ) -> None:
        self.config = config
        self.proposer = proposer
        self.rejection_sampler = RejectionSampler(generator)
        self.max_model_len = max_model_len
        self.metrics = metrics
        self.active: bool | None = None
        self._draft_probs: dict[int, torch.Tensor] = {}
        self._step_seconds = {
            True: 0.0,
            False: 0.0,
        }  # running average per token-row: verify / plain
        self._step_count = {True: 0, False: 0}

    def would_draft(self, running: list[Sequence]) -> bool:
        """Whether this step proposes drafts: 1..max_batch_size sequences decoding."""
        decoding = sum(1 for s in running if s.num_computed_tokens == s.num_tokens - 1)
        return 0 < decoding <= self.config.max_batch_size

    def propose(self, running: list[Sequence]) -> None:
        """Set draft_token_ids on the running sequences that are decoding (when active)."""
        decoding = [s for s in running if s.num_computed_tokens == s.num_tokens - 1]
        active = self.would_draft(running)
        if decoding and active != self.active:
            logger.info(
                "speculative decoding %s: %d sequences decoding (limit %d)",
                "on" if active else "off",
                len(decoding),
                self.config.max_batch_size,
            )
            self.active = active
        self._draft_probs.clear()
        if not decoding:
            return
        if not active:
            self.metrics.num_spec_off_steps += 1
            return
        started = time.perf_counter()
        budgets = [self._budget(s) for s in decoding]
        proposal = self.proposer.propose(decoding, budgets)
        drafts = [list(d[: budgets[i]]) for i, d in enumerate(proposal.token_ids)]
        if self._worth_verifying(decoding, drafts):
            for i, (seq, d) in enumerate(zip(decoding, drafts, strict=True)):
                seq.draft_token_ids = d
                if proposal.probs is not None and d:
                    self._draft_probs[id(seq)] = proposal.probs[i][: len(d)]
        elif any(drafts):
            self.metrics.num_spec_skipped_steps += 1
        self.metrics.spec_propose_seconds += time.perf_counter() - started

    def _worth_verifying(self, seqs: list[Sequence], drafts: list[list[int]]) -> bool:
        """Whether the expected accepted tokens beat the extra cost of a verify step."""
        if not any(drafts):
            return False
        expected = 0.0
        for seq, d in zip(seqs, drafts, strict=True):
            rate = min((seq.num_accepted_drafts + 1) / (seq.num_proposed_drafts + 2), 0.99)
            expected += rate * (1 - rate ** len(d)) / (1 - rate)
        return expected >= len(drafts) * (self.config.verify_cost_ratio - 1.0)

    def _budget(self, seq: Sequence) -> int:
        """Drafts worth proposing: the sequence's own draft length (adaptive_draft_length) or
        the config's, never past max_tokens or the context (a verified step emits accepted
        drafts + 1)."""
        params = seq.request.sampling_params
        left = min(params.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens)
        k = self.config.num_speculative_tokens
        if self.config.adaptive_draft_length and seq.max_draft_tokens is not None:
            k = seq.max_draft_tokens
        return max(0, min(k, left - 1))

    def _adapt_draft_length(self, seq: Sequence, num_drafts: int, num_accepted: int) -> None:
        """After a verify step: shrink to the accepted run + 1 on a rejection, double after a
        fully accepted draft (a draft cut short by the lookup or the budget counts as full)."""
        k = self.config.num_speculative_tokens
        current = k if seq.max_draft_tokens is None else seq.max_draft_tokens
        if num_accepted < num_drafts:
            seq.max_draft_tokens = num_accepted + 1
        else:
            seq.max_draft_tokens = min(k, 2 * current)

    def verify_greedy(
        self, chunks: list[ScheduledChunk], argmax_rows: list[list[int]]
    ) -> list[list[int]]:
        """verify() for greedy chunks that want no logprobs, from the target's argmax tokens
        (argmax_rows[i]: chunk i's 1 + len(drafts) of them, already on the host): a draft is
        accepted while it equals the argmax, and the argmax after the accepted run follows.
        The same tokens as the rejection sampler's greedy rows, without a device round trip."""
        started = time.perf_counter()
        num_accepted, tokens = [], []
        for chunk, argmax in zip(chunks, argmax_rows, strict=True):
            drafts = chunk.draft_token_ids
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == argmax[accepted]:
                accepted += 1
            num_accepted.append(accepted)
            tokens.append(list(drafts[:accepted]) + [argmax[accepted]])
        self._account(chunks, num_accepted, started)
        return tokens

    def verify(self, chunks: list[ScheduledChunk], rows: list[torch.Tensor]) -> list[list[int]]:
        """New tokens for each chunk with drafts; rows[i] is chunk i's logits
        [1 + len(drafts), vocab]. Appends logprobs of the emitted tokens when asked."""
        started = time.perf_counter()
        k = max(len(c.draft_token_ids) for c in chunks)
        vocab = rows[0].shape[-1]
        target = rows[0].new_zeros((len(chunks), k + 1, vocab))
        for i, r in enumerate(rows):
            target[i, : r.shape[0]] = r
        seqs = [c.seq for c in chunks]
        drafts = [list(c.draft_token_ids) for c in chunks]
        draft_probs = None
        if self._draft_probs:
            draft_probs = target.new_zeros((len(chunks), k, vocab))
            for i, seq in enumerate(seqs):
                probs = self._draft_probs.get(id(seq))
                if probs is not None:
                    draft_probs[i, : probs.shape[0]] = probs
        out = self.rejection_sampler(target, drafts, seqs, draft_probs)
        for seq, r, tokens in zip(seqs, rows, out.token_ids, strict=True):
            n = seq.request.sampling_params.logprobs
            if n is not None:
                logprobs = r[: len(tokens)].log_softmax(dim=-1)
                for j, t in enumerate(tokens):
                    top: dict[int, float] = {}
                    if n > 0:
                        values, indices = logprobs[j].topk(n)
                        top = dict(zip(indices.tolist(), values.tolist(), strict=True))
                    seq.logprobs.append(TokenLogprob(t, float(logprobs[j, t]), top))
        self._account(chunks, out.num_accepted, started)
        return out.token_ids

    def _account(self, chunks: list[ScheduledChunk], num_accepted: list[int], started: float):
        """Per-sequence acceptance (and draft length), and the run's counters."""
        for chunk, accepted in zip(chunks, num_accepted, strict=True):
            seq, num_drafts = chunk.seq, len(chunk.draft_token_ids)
            seq.num_proposed_drafts += num_drafts
            seq.num_accepted_drafts += accepted
            if self.config.adaptive_draft_length and num_drafts:
                self._adapt_draft_length(seq, num_drafts, accepted)
        m = self.metrics
        m.num_spec_steps += 1
        m.num_draft_tokens += sum(len(c.draft_token_ids) for c in chunks)
        m.num_accepted_tokens += sum(num_accepted)
        m.num_verified_sequences += len(chunks)
        m.spec_verify_seconds += time.perf_counter() - started
