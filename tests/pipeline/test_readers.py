from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.readers import check_columns, count_rows, iter_rows, parse_batch_line
from pipeline.storage import list_dataset


def _parquet_bytes(rows: list[dict], row_group_size: int = 4) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=row_group_size)
    return sink.getvalue()


def _rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"r{i}", "prompt": f"prompt {i}", "topic": i % 3} for i in range(start, start + n)
    ]


@pytest.fixture(params=["local", "memory"])
def dataset_url(request, tmp_path: Path) -> str:
    """A folder with two Parquet files (10 + 7 rows), a JSONL file and a hidden file."""
    if request.param == "local":
        root = str(tmp_path / "data")
    else:
        root = f"memory://readers-{uuid.uuid4().hex[:8]}/data"
    fs, path = fsspec.core.url_to_fs(root)
    fs.makedirs(f"{path}/sub", exist_ok=True)
    fs.pipe_file(f"{path}/a.parquet", _parquet_bytes(_rows(10)))
    fs.pipe_file(f"{path}/sub/b.parquet", _parquet_bytes(_rows(7, start=10)))
    fs.pipe_file(f"{path}/_SUCCESS.parquet", b"not parquet")
    lines = [
        json.dumps({"custom_id": "c1", "body": {"messages": [{"role": "user", "content": "Hi"}]}}),
        "",
        "{not json",
        json.dumps({"custom_id": "c2", "body": {"prompt": "Hello", "max_completion_tokens": 5}}),
    ]
    fs.pipe_file(f"{path}/batch.jsonl", ("\n".join(lines) + "\n").encode())
    return root


def test_listing_a_folder_finds_files_recursively_in_name_order_and_skips_hidden(dataset_url):
    files = list_dataset(dataset_url, (".parquet",))
    assert [f.name for f in files] == ["a.parquet", "sub/b.parquet"]
    assert all(f.size > 0 for f in files)


def test_listing_a_glob_and_a_single_file(dataset_url):
    assert [f.name for f in list_dataset(f"{dataset_url}/**/*.parquet", (".parquet",))] == [
        "_SUCCESS.parquet",
        "a.parquet",
        "sub/b.parquet",
    ]
    single = list_dataset(f"{dataset_url}/sub/b.parquet", (".parquet",))
    assert [f.name for f in single] == ["b.parquet"]


def test_listing_a_missing_dataset_names_the_url(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list_dataset(str(tmp_path / "nothing-here"), (".parquet",))


def test_parquet_range_spanning_row_groups_reads_exactly_those_rows(dataset_url):
    config = JobConfig.from_dict(
        {
            "model": "m",
            "input": {"url": dataset_url, "id_column": "id", "carry_columns": ["topic"]},
            "output": {"url": "o"},
        }
    )
    file = list_dataset(dataset_url, (".parquet",))[0]
    assert count_rows(file, config.input.format, {}) == 10
    rows = list(
        iter_rows(file, config.input.format, config.input.columns, 3, 9, 103, {}, batch_rows=2)
    )
    assert [r.values["id"] for r in rows] == [f"r{i}" for i in range(3, 9)]
    assert [r.row_index for r in rows] == list(range(103, 109))
    assert [r.source_row for r in rows] == list(range(3, 9))
    assert set(rows[0].values) == {"id", "prompt", "topic"}


def test_jsonl_lines_become_rows_and_a_bad_line_becomes_an_error_row(dataset_url):
    config = JobConfig.from_dict(
        {
            "model": "m",
            "input": {"url": dataset_url, "format": "openai-jsonl"},
            "output": {"url": "o"},
        }
    )
    file = list_dataset(dataset_url, (".jsonl",))[0]
    assert count_rows(file, config.input.format, {}) == 3  # the blank line is not a row
    rows = list(iter_rows(file, config.input.format, config.input.columns, 0, 3, 0, {}))
    assert rows[0].values["messages"] == [{"role": "user", "content": "Hi"}]
    assert rows[1].read_error is not None and rows[1].read_error.startswith("line 3: invalid JSON")
    assert rows[2].values["prompt"] == "Hello" and rows[2].values["max_tokens"] == 5
    assert [r.row_index for r in rows] == [0, 1, 2]


def test_missing_prompt_column_is_an_error_naming_column_and_file(dataset_url):
    config = JobConfig.from_dict(
        {
            "model": "m",
            "input": {"url": dataset_url, "prompt_column": "question"},
            "output": {"url": "o"},
        }
    )
    files = list_dataset(dataset_url, (".parquet",))
    with pytest.raises(ValueError, match=r"input column 'question' not found in a.parquet"):
        check_columns(files, config.input.columns, {})


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"[1, 2]", "line 7: expected a JSON object, got list"),
        (b'{"custom_id": "x"}', "body: missing"),
        (b'{"custom_id": "x", "body": "hi"}', "body: expected an object, got str"),
        (b"\xff\xfe", "line 7: invalid JSON"),
    ],
)
def test_batch_line_problems_are_reported_not_raised(line, error):
    _, read_error = parse_batch_line(line, 7)
    assert read_error is not None and read_error.startswith(error)
