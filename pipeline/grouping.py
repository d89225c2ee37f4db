"""Dedup and prefix grouping of one shard's requests, and the prefix-cache hit rate they should
give.

1. `group_requests`: rows whose requests are identical (same prompt or messages, same
   effective sampling params) and deterministic (greedy or seeded) share one `UniqueRequest`;
   the engine runs it once and its completion is fanned out to every row.
2. `order_requests`: unique requests sorted by their text (`RowRequest.order_key`), so the ones
   sharing a system prompt or few-shot block are adjacent and run close in time, while their
   blocks are still in the LRU prefix cache. (The engine registers a prompt's full blocks when
   it allocates them, so neighbours admitted in the same step share them too.)
3. `predict_cached_tokens`: replays the submission order over the token ids with the engine's
   rule (full blocks, chained, the last prompt token never cached) and an unbounded cache.
   predicted hit rate = tokens in already-seen full blocks / prompt tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.rows import PreparedRow, RowRequest


@dataclass(frozen=True)
class UniqueRequest:
    """One request to run and the rows that receive its completion (rows[0] is the first seen)."""

    request: RowRequest
    rows: tuple[PreparedRow, ...]


def group_requests(rows: Iterable[PreparedRow], dedup: bool) -> list[UniqueRequest]:
    """Unique requests of the valid rows, in first-seen order. Rows with an error are skipped;
    with dedup off (or non-deterministic params) every row is its own request."""
    groups: dict[str, list[PreparedRow]] = {}
    order: list[list[PreparedRow]] = []
    for row in rows:
        if row.request is None:
            continue
        key = row.request.dedup_key if dedup else None
        if key is None:
            order.append([row])
        elif key in groups:
            groups[key].append(row)
        else:
            groups[key] = [row]
            order.append(groups[key])
    return [UniqueRequest(members[0].request, tuple(members)) for members in order]  # type: ignore[arg-type]


def order_requests(unique: Sequence[UniqueRequest], prefix_grouping: bool) -> list[UniqueRequest]:
    """The submission order: sorted by text when prefix_grouping, else first-seen order.
    Stable: equal keys keep their first-seen order."""
    if not prefix_grouping:
        return list(unique)
    return sorted(unique, key=lambda u: u.request.order_key)


def predict_cached_tokens(token_id_lists: Iterable[Sequence[int]], block_size: int) -> int:
    """Prompt tokens the prefix cache should serve when prompts run in this order, assuming
    the cache keeps every block: for each prompt, the leading run of its full blocks (not
    covering its last token) already computed by an earlier prompt."""
    seen: set[int] = set()
    cached = 0
    for token_ids in token_id_lists:
        parent = 0
        hashes = []
        for start in range(0, len(token_ids) - block_size + 1, block_size):
            parent = hash((parent, tuple(token_ids[start : start + block_size])))
            hashes.append(parent)
        cacheable = (len(token_ids) - 1) // block_size
        for h in hashes[:cacheable]:
            if h not in seen:
                break
            cached += block_size
        seen.update(hashes)
    return cached


def dedup_ratio(num_valid_rows: int, num_requests: int, num_rows: int) -> float:
    """Share of all rows whose generation is saved by dedup."""
    return (num_valid_rows - num_requests) / num_rows if num_rows else 0.0
