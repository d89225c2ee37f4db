from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig, ShardingConfig, ShardingStrategy
from pipeline.plan import list_input, load_shard_rows
from pipeline.readers import count_rows
from pipeline.sharding import num_shards_for, split_into_shards
from pipeline.storage import InputFile


def _files(*counts: int) -> list[tuple[InputFile, int]]:
    return [
        (InputFile(f"file:///d/{i}.parquet", f"{i}.parquet", 1), n) for i, n in enumerate(counts)
    ]


def test_range_shards_cover_every_row_once_in_order_and_near_equal():
    shards = split_into_shards(_files(5, 4, 0, 3), 5)
    covered = [
        seg.first_row_index + k for s in shards for seg in s.segments for k in range(seg.num_rows)
    ]
    assert covered == list(range(12))
    assert [sum(seg.num_rows for seg in s.segments) for s in shards] == [3, 3, 2, 2, 2]
    assert [(seg.file.name, seg.start, seg.stop) for seg in shards[1].segments] == [
        ("0.parquet", 3, 5),
        ("1.parquet", 0, 1),
    ]


def test_splitting_again_gives_identical_shards():
    assert split_into_shards(_files(7, 9), 4) == split_into_shards(_files(7, 9), 4)


@pytest.mark.parametrize(
    ("total", "config", "expected"),
    [
        (100, ShardingConfig(), 1),
        (100, ShardingConfig(num_shards=8), 8),
        (100, ShardingConfig(rows_per_shard=30), 4),
        (3, ShardingConfig(num_shards=8), 3),
        (0, ShardingConfig(num_shards=8), 1),
    ],
)
def test_number_of_shards(total, config, expected):
    assert num_shards_for(total, config) == expected


def _dataset(tmp_path: Path) -> str:
    rows = [{"prompt": f"question {i % 7}"} for i in range(40)]  # many exact duplicates
    for name, part in (("a", rows[:25]), ("b", rows[25:])):
        pq.write_table(pa.Table.from_pylist(part), tmp_path / f"{name}.parquet", row_group_size=6)
    return str(tmp_path)


@pytest.mark.parametrize("strategy", ["range", "content"])
def test_rerun_maps_every_row_to_the_same_shard(tmp_path: Path, strategy: str):
    config = JobConfig.from_dict(
        {
            "model": "m",
            "input": {"url": _dataset(tmp_path)},
            "output": {"url": str(tmp_path / "out")},
            "sharding": {"num_shards": 3, "strategy": strategy},
        }
    )

    def assignment() -> dict[str, int]:
        files = [(f, count_rows(f, config.input.format, {})) for f in list_input(config)]
        shards = split_into_shards(files, 3, config.sharding.strategy)
        return {r.row_id: s.index for s in shards for r in load_shard_rows(config, s)}

    first = assignment()
    assert len(first) == 40  # every row in exactly one shard
    assert assignment() == first


def test_content_sharding_puts_all_duplicates_of_a_request_in_one_shard(tmp_path: Path):
    config = JobConfig.from_dict(
        {
            "model": "m",
            "input": {"url": _dataset(tmp_path)},
            "output": {"url": str(tmp_path / "out")},
            "sharding": {"num_shards": 3, "strategy": "content"},
        }
    )
    files = [(f, count_rows(f, config.input.format, {})) for f in list_input(config)]
    shards = split_into_shards(files, 3, ShardingStrategy.CONTENT)
    shard_of_prompt: dict[str, set[int]] = {}
    for shard in shards:
        for row in load_shard_rows(config, shard):
            shard_of_prompt.setdefault(row.row.values["prompt"], set()).add(shard.index)
    assert len(shard_of_prompt) == 7
    assert all(len(s) == 1 for s in shard_of_prompt.values())
