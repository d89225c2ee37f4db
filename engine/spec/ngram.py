"""N-gram prompt lookup: find the latest n tokens earlier in the sequence and propose what
followed them there. No model; good on copy-heavy work (extraction, rewriting, code edits)."""

from __future__ import annotations

from engine.request import Sequence
from engine.spec.proposer import Proposal


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> Proposal:
        """Up to num_tokens[i] draft tokens for seqs[i] (possibly none). Tries the longest
        n-gram first; among its earlier occurrences the most recent one wins."""
        return Proposal(
            [self._propose_one(seq.token_ids, k) for seq, k in zip(seqs, num_tokens, strict=True)]
        )

    def release(self, seq: Sequence) -> None:
        """Nothing is kept per sequence."""

    def _propose_one(self, tokens: list[int], k: int) -> list[int]:
        if k <= 0:
            return []
        length = len(tokens)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            tail = tokens[length - n :]
            # search right to left, never matching the tail itself
            for start in range(length - n - 1, -1, -1):
                if tokens[start : start + n] == tail:
                    follow = tokens[start + n : start + n + k]
                    if follow:
                        return follow
        return []
