"""Block tables for the shared-prefix tests: grown like the prefix cache grows them."""

from __future__ import annotations

import numpy as np

from engine.model_runner import padded_block_table_np


def padded(rows: list[list[int]]) -> np.ndarray:
    """[len(rows), longest] int32, rows right-padded with block 0 (as the engine pads them)."""
    return padded_block_table_np(rows, max(len(r) for r in rows))


def random_prefix_tree(
    rng: np.random.Generator, num_seqs: tuple[int, int], own_blocks: tuple[int, int]
) -> tuple[list[list[int]], int]:
    """Block lists where each new sequence usually reuses a prefix of an earlier one's blocks
    (possibly all, possibly none), then gets fresh blocks of its own; sizes drawn from the
    half-open ranges. Returns the lists and how many distinct blocks they use."""
    rows: list[list[int]] = []
    next_block = 0
    for _ in range(int(rng.integers(*num_seqs))):
        shared: list[int] = []
        if rows and rng.random() < 0.8:
            parent = rows[int(rng.integers(len(rows)))]
            shared = parent[: int(rng.integers(0, len(parent) + 1))]
        own = int(rng.integers(*own_blocks))
        rows.append(shared + list(range(next_block, next_block + own)))
        next_block += own
    return rows, next_block


def contexts_ending_in_last_block(
    rng: np.random.Generator, rows: list[list[int]], block_size: int
) -> np.ndarray:
    """A context length per row whose last token falls in the row's last block."""
    return np.array(
        [(len(r) - 1) * block_size + int(rng.integers(1, block_size + 1)) for r in rows],
        dtype=np.int32,
    )
