"""Speculative decoding inside the engine step: propose drafts for decoding sequences before
scheduling, verify them from the target's logits after the step, keep the counters.

Adaptive: drafts are proposed only while 1..max_batch_size sequences decode; past that a step
is compute-bound and the target would pay for every rejected draft. Switches are logged.
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

    def propose(self, running: list[Sequence]) -> None:
        """Set draft_token_ids on the running sequences that are decoding (when active)."""
        decoding = [s for s in running if s.num_computed_tokens == s.num_tokens - 1]
        active = 0 < len(decoding) <= self.config.max_batch_size
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
        for i, (seq, drafts) in enumerate(zip(decoding, proposal.token_ids, strict=True)):
            seq.draft_token_ids = list(drafts[: budgets[i]])
            if proposal.probs is not None and seq.draft_token_ids:
                self._draft_probs[id(seq)] = proposal.probs[i][: len(seq.draft_token_ids)]
        self.metrics.spec_propose_seconds += time.perf_counter() - started

    def _budget(self, seq: Sequence) -> int:
        """Drafts worth proposing: never past max_tokens or the context (a verified step emits
        accepted drafts + 1)."""
        params = seq.request.sampling_params
        left = min(params.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens)
        return max(0, min(self.config.num_speculative_tokens, left - 1))

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
        m = self.metrics
        m.num_spec_steps += 1
        m.num_draft_tokens += sum(len(d) for d in drafts)
        m.num_accepted_tokens += sum(out.num_accepted)
        m.num_verified_sequences += len(chunks)
        m.spec_verify_seconds += time.perf_counter() - started
        return out.token_ids
