"""Speculative decoding inside the engine step: propose drafts for decoding sequences before
scheduling, verify them from the target's logits after the step, keep the counters.

Adaptive, three times over: drafts are proposed only while 1..max_batch_size sequences decode
(past that a step is compute-bound and the target would pay for every rejected draft); a
proposer that costs target time (a draft model, `cost_per_token` > 0) proposes only as many
drafts as pay for their own steps and the verify step by MIN_GAIN, judged by the expected
accepted tokens, and sits steps out when none do, probing again after PROBE_INTERVAL of them
(doubling after each probe that did not pay) so a change in the text is noticed; and a step's
drafts are verified only when the tokens they are expected to add pay for the wider step. The
expectations use each sequence's own acceptance so far (a per-draft acceptance a gives
a + a^2 + ... + a^d expected tokens for d drafts). Switches are logged. All of it depends only
on the sequences' tokens, never on timing, so a seeded run repeats exactly.
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

PROBE_INTERVAL = 16  # steps a costly proposer sits out before it proposes again anyway
MAX_PROBE_INTERVAL = 256  # the interval doubles after each probe that does not pay
# a costly proposer drafts only when drafting beats plain steps by this much: near break-even
# the model's error (a batch waits for its least-accepted sequence; a sequence's draft cache
# must catch up after steps without drafts) makes speculation lose
MIN_GAIN = 1.1


def _decoding(running: list[Sequence]) -> list[Sequence]:
    """The running sequences whose next step is a decode (all but their last token computed)."""
    return [s for s in running if s.num_computed_tokens == s.num_tokens - 1]


def expected_accepted(rate: float, num_drafts: int) -> float:
    """Expected accepted drafts out of num_drafts at a per-draft acceptance rate."""
    return rate * (1 - rate**num_drafts) / (1 - rate)


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
        self._proposed = 0  # drafts verified and accepted so far, all sequences
        self._accepted = 0
        self._skipped = 0  # steps in a row a costly proposer sat out
        self._probe_interval = PROBE_INTERVAL
        self._probing = False  # the last proposal was a probe
        self._skipped_with = 0  # sequences decoding when it last decided to sit out

    def would_draft(self, running: list[Sequence]) -> bool:
        """Whether this step proposes drafts: 1..max_batch_size sequences decoding and (for a
        costly proposer) drafts that pay for their steps."""
        decoding = _decoding(running)
        return self._in_range(decoding) and bool(self._draft_length(decoding))

    def _in_range(self, decoding: list[Sequence]) -> bool:
        return 0 < len(decoding) <= self.config.max_batch_size

    def _rate(self, seq: Sequence) -> float:
        """seq's per-draft acceptance so far; sequences with little history lean on the run's."""
        prior = (self._accepted + 1) / (self._proposed + 1)
        rate = (seq.num_accepted_drafts + 2 * prior) / (seq.num_proposed_drafts + 2)
        return min(rate, 0.99)

    def _draft_length(self, decoding: list[Sequence]) -> int:
        """Drafts per sequence this step: all of the budget for a proposer that costs no target
        time; for a costly one the length whose expected tokens per unit of step time beat a
        plain step's most (0: none does), or all of it when a probe is due."""
        cost = self.proposer.cost_per_token
        k = self.config.num_speculative_tokens
        if cost <= 0 or self._probe_due():
            return k
        if self._skipped and len(decoding) == self._skipped_with:
            return 0  # nothing has been verified since it said no, and no sequence joined or left
        budgets = [self._budget(s) for s in decoding]
        rates = [self._rate(s) for s in decoding]
        best_length, best = 0, MIN_GAIN * len(decoding)  # a plain step: a token each, cost 1
        for d in range(1, max(budgets, default=0) + 1):
            tokens = sum(
                1 + expected_accepted(r, min(d, b)) for r, b in zip(rates, budgets, strict=True)
            )
            per_cost = tokens / (d * cost + self.config.verify_cost_ratio)
            if per_cost > best:
                best_length, best = d, per_cost
        return best_length

    def _probe_due(self) -> bool:
        return self._skipped >= self._probe_interval

    def propose(self, running: list[Sequence]) -> None:
        """Set draft_token_ids on the running sequences that are decoding (when active)."""
        decoding = _decoding(running)
        in_range = self._in_range(decoding)
        length = self._draft_length(decoding) if in_range else 0
        active = length > 0
        if decoding and active != self.active:
            reason = (
                "drafts pay"
                if active
                else "drafts would not pay for their steps"
                if in_range
                else "too many sequences decoding"
            )
            logger.info(
                "speculative decoding %s: %s (%d decoding, limit %d)",
                "on" if active else "off",
                reason,
                len(decoding),
                self.config.max_batch_size,
            )
            self.active = active
        self._draft_probs.clear()
        if not decoding:
            return
        if not active:
            self.metrics.num_spec_off_steps += 1
            if in_range:
                if self._probing:  # the probe's acceptance did not pay: wait longer next time
                    self._probe_interval = min(2 * self._probe_interval, MAX_PROBE_INTERVAL)
                    self._probing = False
                self._skipped += 1
                self._skipped_with = len(decoding)
            return
        if self._probe_due():
            self._probing = True
        else:
            self._probing = False
            self._probe_interval = PROBE_INTERVAL
        self._skipped = 0
        started = time.perf_counter()
        budgets = [min(self._budget(s), length) for s in decoding]
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
            expected += expected_accepted(rate, len(d))
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
            self._proposed += num_drafts
            self._accepted += accepted
            if self.config.adaptive_draft_length and num_drafts:
                self._adapt_draft_length(seq, num_drafts, accepted)
        m = self.metrics
        m.num_spec_steps += 1
        m.num_draft_tokens += sum(len(c.draft_token_ids) for c in chunks)
        m.num_accepted_tokens += sum(num_accepted)
        m.num_verified_sequences += len(chunks)
        m.spec_verify_seconds += time.perf_counter() - started
