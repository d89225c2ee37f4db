"""Finds, for a decode step, the sequences whose block tables start with the same physical
blocks, and tiles them for shared-prefix attention (kernels/shared_prefix.py).

Blocks are shared only through the prefix cache, whose block hashes chain over every earlier
token: the same physical block at column c of two block tables means the two sequences hold
identical tokens up to the end of that block, and share every block before it too. So a
sequence's shared depth is the number of leading columns whose block some other running
sequence also holds, and sequences whose deepest shared block is the same block form a group
with exactly that many blocks in common. A group's prefix stops short of the block holding
each member's last token (that token's query must see its own key, read by the plain pass).

The plan is worth running only when it removes a good share of the step's KV reads: planning
returns None otherwise, and the step runs plain paged attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SharedPrefixPlan:
    """Host arrays of a kernels.shared_prefix.SharedPrefix, tiles padded to max_tiles."""

    prefix_lens: np.ndarray  # [num_seqs] int32
    seq_order: np.ndarray  # [num_seqs] int32
    tile_leader: np.ndarray  # [max_tiles] int32, -1 for unused tiles
    tile_prefix_len: np.ndarray  # [max_tiles] int32
    tile_first: np.ndarray  # [max_tiles] int32
    tile_count: np.ndarray  # [max_tiles] int32
    num_tiles: int  # tiles in use
    saved_tokens: int  # KV token reads saved per layer and KV head: sum (members - 1) * prefix


def max_plan_tiles(max_seqs: int, seqs_per_tile: int, max_groups: int) -> int:
    """Tiles a plan for max_seqs sequences in at most max_groups groups can use."""
    return -(-max_seqs // seqs_per_tile) + max_groups


def plan_shared_prefix(
    block_table: np.ndarray,
    context_lens: np.ndarray,
    block_size: int,
    seqs_per_tile: int,
    max_groups: int,
    min_saved_fraction: float = 0.2,
) -> SharedPrefixPlan | None:
    """Plan one decode step. block_table: [num_seqs, width] int32 (padding past each row's
    blocks is ignored); context_lens: [num_seqs] tokens each sequence's attention spans.
    Returns None when the shared prefixes would save less than min_saved_fraction of the
    step's KV token reads."""
    num_seqs, width = block_table.shape
    if num_seqs < 2:
        return None
    context_lens = np.asarray(context_lens, dtype=np.int64)
    # Full blocks strictly before the block of each sequence's last token.
    usable = np.minimum((context_lens - 1) // block_size, width)
    columns = np.arange(width)
    in_use = columns[None, :] < usable[:, None]
    if not in_use.any():
        return None
    ids = block_table.astype(np.int64)
    counts = np.bincount(ids[in_use], minlength=int(ids.max()) + 1)
    shared = in_use & (counts[ids] >= 2)
    depth = np.cumprod(shared, axis=1).sum(axis=1)  # leading shared columns per sequence
    members = np.flatnonzero(depth > 0)
    if members.size < 2:
        return None
    keys = ids[members, depth[members] - 1]
    unique_keys, group_of, group_sizes = np.unique(keys, return_inverse=True, return_counts=True)
    group_depth = np.zeros(unique_keys.size, dtype=np.int64)
    group_depth[group_of] = depth[members]
    savings = (group_sizes - 1) * group_depth * block_size
    chosen = np.argsort(-savings, kind="stable")[:max_groups]
    chosen = chosen[savings[chosen] > 0]
    saved = int(savings[chosen].sum())
    if saved < min_saved_fraction * int(context_lens.sum()):
        return None

    max_tiles = max_plan_tiles(num_seqs, seqs_per_tile, max_groups)
    prefix_lens = np.zeros(num_seqs, dtype=np.int32)
    tile_leader = np.full(max_tiles, -1, dtype=np.int32)
    tile_prefix_len = np.zeros(max_tiles, dtype=np.int32)
    tile_first = np.zeros(max_tiles, dtype=np.int32)
    tile_count = np.zeros(max_tiles, dtype=np.int32)
    order: list[np.ndarray] = []
    placed = 0
    tile = 0
    for group in chosen:
        seqs = members[group_of == group]
        prefix = int(group_depth[group]) * block_size
        prefix_lens[seqs] = prefix
        order.append(seqs)
        for start in range(0, seqs.size, seqs_per_tile):
            count = min(seqs_per_tile, seqs.size - start)
            tile_leader[tile] = seqs[0]
            tile_prefix_len[tile] = prefix
            tile_first[tile] = placed + start
            tile_count[tile] = count
            tile += 1
        placed += seqs.size
    grouped = np.concatenate(order)
    rest = np.setdiff1d(np.arange(num_seqs), grouped, assume_unique=True)
    seq_order = np.concatenate([grouped, rest]).astype(np.int32)
    return SharedPrefixPlan(
        prefix_lens=prefix_lens,
        seq_order=seq_order,
        tile_leader=tile_leader,
        tile_prefix_len=tile_prefix_len,
        tile_first=tile_first,
        tile_count=tile_count,
        num_tiles=tile,
        saved_tokens=saved,
    )
