"""N-gram prompt lookup: find the latest n tokens earlier in the sequence and propose what
followed them there. No model; good on copy-heavy work (extraction, rewriting, code edits).

Each sequence keeps an index per n from every n-gram to the latest position where it starts,
covering the n-grams that end before the sequence's last token; it grows with the sequence, so
a lookup costs O(max_n - min_n) dictionary probes rather than a scan of the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.request import Sequence
from engine.spec.proposer import Proposal


@dataclass
class _Index:
    starts: dict[int, dict[tuple[int, ...], int]] = field(
        default_factory=dict
    )  # n -> gram -> start
    num_indexed: dict[int, int] = field(default_factory=dict)  # n -> starts indexed so far


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n
        self._indexes: dict[Sequence, _Index] = {}

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> Proposal:
        """Up to num_tokens[i] draft tokens for seqs[i] (possibly none). Tries the longest
        n-gram first; among its earlier occurrences the most recent one wins."""
        return Proposal(
            [self._propose_one(seq, k) for seq, k in zip(seqs, num_tokens, strict=True)]
        )

    def release(self, seq: Sequence) -> None:
        self._indexes.pop(seq, None)

    def _propose_one(self, seq: Sequence, k: int) -> list[int]:
        if k <= 0:
            return []
        tokens = seq.token_ids
        length = len(tokens)
        index = self._indexes.setdefault(seq, _Index())
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            starts = index.starts.setdefault(n, {})
            # index every n-gram that starts at or before length - n - 1 (so never the tail)
            for start in range(index.num_indexed.get(n, 0), length - n):
                starts[tuple(tokens[start : start + n])] = start
            index.num_indexed[n] = max(index.num_indexed.get(n, 0), length - n)
            found = starts.get(tuple(tokens[length - n :]))
            if found is not None:
                follow = tokens[found + n : found + n + k]
                if follow:
                    return follow
        return []
