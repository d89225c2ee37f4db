"""The interface every proposer implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from engine.request import Sequence


@dataclass
class Proposal:
    """Draft tokens per sequence (possibly empty) and, for proposers that sample, the draft
    distribution each draft token was drawn from ([len(drafts), vocab] per sequence)."""

    token_ids: list[list[int]]
    probs: list[torch.Tensor] | None = None


class Proposer(Protocol):
    # target-step time one draft token costs (a draft model's step / a plain target step);
    # 0 for proposers that take no device time worth counting
    cost_per_token: float

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> Proposal:
        """Up to num_tokens[i] drafts for seqs[i], continuing seqs[i].token_ids."""
        ...

    def release(self, seq: Sequence) -> None:
        """Forget seq (finished or preempted): drop any state kept for it."""
        ...
