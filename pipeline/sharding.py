"""Deterministic sharding. Two strategies (config.ShardingStrategy):

range (default): the dataset's files, in name order, form one sequence of rows that is
cut into contiguous ranges. The same files with the same row counts always give the same
shards, so a rerun maps every row to the same shard; the plan records the cut so a changed
dataset is noticed instead of silently reshuffled.

A shard reads only its own ranges (Parquet: only the overlapping row groups), so running one
shard costs its rows, not a scan of the whole dataset. Duplicates are found within a shard.

    files:   a.parquet (5 rows)        b.parquet (4 rows)
    rows:    0 1 2 3 4                 5 6 7 8
    3 shards of ceil(9/3)=3 rows:
    shard 0  [a 0:3]      shard 1  [a 3:5, b 0:1]      shard 2  [b 1:4]
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from pipeline.config import ShardingConfig, ShardingStrategy
from pipeline.rows import PreparedRow
from pipeline.storage import InputFile


@dataclass(frozen=True)
class Segment:
    """Rows start..stop-1 of one file; the first of them is row first_row_index of the dataset."""

    file: InputFile
    start: int
    stop: int
    first_row_index: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": {"url": self.file.url, "name": self.file.name, "size": self.file.size},
            "start": self.start,
            "stop": self.stop,
            "first_row_index": self.first_row_index,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Segment:
        return cls(
            InputFile(**values["file"]),
            values["start"],
            values["stop"],
            values["first_row_index"],
        )


@dataclass(frozen=True)
class ShardSpec:
    """Which rows one shard holds: the rows of its segments (in dataset order) that `selects`
    accepts — all of them for range sharding."""

    index: int
    num_shards: int
    strategy: ShardingStrategy
    segments: tuple[Segment, ...]

    def selects(self, row: PreparedRow) -> bool:
        if self.strategy is ShardingStrategy.RANGE:
            return True
        return shard_of_row(row, self.num_shards) == self.index


def shard_of_row(row: PreparedRow, num_shards: int) -> int:
    """The content strategy's shard of a row; depends only on the row's request (or id)."""
    key = (row.request.dedup_key if row.request is not None else None) or f"id:{row.row_id}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % num_shards


DEFAULT_ROWS_PER_SHARD = 100_000  # ~1.2 GB peak RSS planning/streaming one shard (bench/RESULTS.md)


def num_shards_for(total_rows: int, config: ShardingConfig) -> int:
    """How many shards: as configured, or enough for rows_per_shard (DEFAULT_ROWS_PER_SHARD when
    neither is given); at least one, and never more than there are rows (an empty dataset still
    has one empty shard)."""
    if config.rows_per_shard is not None:
        wanted = math.ceil(total_rows / config.rows_per_shard)
    elif config.num_shards is not None:
        wanted = config.num_shards
    else:  # a shard's rows are held while it runs: bound them by default
        wanted = math.ceil(total_rows / DEFAULT_ROWS_PER_SHARD)
    return max(1, min(wanted, total_rows))


def split_into_shards(
    files: list[tuple[InputFile, int]],
    num_shards: int,
    strategy: ShardingStrategy = ShardingStrategy.RANGE,
) -> list[ShardSpec]:
    """Range: cut files (each with its row count, in dataset order) into num_shards contiguous
    shards of near-equal size (the first total % num_shards shards hold one row more).
    Content: every shard spans every file whole and selects its rows by hash."""
    assert num_shards >= 1
    if strategy is ShardingStrategy.CONTENT:
        whole, offset = [], 0
        for file, n in files:
            if n:
                whole.append(Segment(file, 0, n, offset))
            offset += n
        return [ShardSpec(k, num_shards, strategy, tuple(whole)) for k in range(num_shards)]
    total = sum(n for _, n in files)
    base, extra = divmod(total, num_shards)
    bounds = [0]
    for k in range(num_shards):
        bounds.append(bounds[-1] + base + (1 if k < extra else 0))
    shards = []
    for k in range(num_shards):
        lo, hi = bounds[k], bounds[k + 1]
        segments = []
        offset = 0
        for file, n in files:
            start, stop = max(lo - offset, 0), min(hi - offset, n)
            if start < stop:
                segments.append(Segment(file, start, stop, offset + start))
            offset += n
        shards.append(ShardSpec(k, num_shards, strategy, tuple(segments)))
    return shards
