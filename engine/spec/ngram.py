"""N-gram prompt lookup: find the latest n tokens earlier in the sequence and propose what
followed them there. No model; good on copy-heavy work (extraction, rewriting, code edits).

Each sequence keeps an index per n from every n-gram to the positions where it starts, covering
the n-grams that end before the sequence's last token; it grows with the sequence, so a lookup
costs O(max_n - min_n) dictionary probes (plus a bisect) rather than a scan of the sequence.

Which occurrence to follow: a sequence that copies walks through its source in order, so the
proposer remembers where its last followed match sat relative to the sequence's tail (the
offset) and follows the occurrence nearest to that place; with no match followed yet, the latest
occurrence. After the copy diverges for a few tokens (a corrected word), a short n-gram such as
", the" has many occurrences, and the nearest one to the old place is the one the copy resumes
from, where the latest one is usually elsewhere.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from engine.request import Sequence
from engine.spec.proposer import Proposal


@dataclass
class _Index:
    starts: dict[int, dict[tuple[int, ...], list[int]]] = field(
        default_factory=dict
    )  # n -> gram -> its start positions, ascending
    num_indexed: dict[int, int] = field(default_factory=dict)  # n -> starts indexed so far
    offset: int | None = None  # start of the last followed match - start of the tail it matched


def _nearest(starts: list[int], expected: int) -> int:
    """The start closest to expected (the later one on a tie)."""
    i = bisect_left(starts, expected)
    if i == len(starts):
        return starts[-1]
    if i == 0:
        return starts[0]
    before, after = starts[i - 1], starts[i]
    return before if expected - before < after - expected else after


class NgramProposer:
    cost_per_token = 0.0  # a host lookup per sequence

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n
        self._indexes: dict[Sequence, _Index] = {}

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> Proposal:
        """Up to num_tokens[i] draft tokens for seqs[i] (possibly none). Tries the longest
        n-gram first; among its earlier occurrences the one nearest to where the sequence's
        last followed match sat (see the module docstring), else the most recent one."""
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
                starts.setdefault(tuple(tokens[start : start + n]), []).append(start)
            index.num_indexed[n] = max(index.num_indexed.get(n, 0), length - n)
            found = starts.get(tuple(tokens[length - n :]))
            if not found:
                continue
            tail = length - n
            start = found[-1] if index.offset is None else _nearest(found, tail + index.offset)
            index.offset = start - tail
            return tokens[start + n : start + n + k]
        return []
