"""Reading dataset files into `InputRow`s: Parquet in record batches, OpenAI batch JSONL line by
line. Memory stays bounded by one record batch (Parquet) or one line (JSONL), whatever the
file size. Files are opened through pipeline.storage.

OpenAI batch JSONL: each non-blank line is ``{"custom_id", "method", "url", "body": {...}}``;
the reader turns it into the fixed columns custom_id, prompt (body.prompt), messages
(body.messages) and the overrides max_tokens (or max_completion_tokens), temperature, top_p,
seed, stop — plus any top-level keys named as carry columns. A line that is not a JSON object
with a body becomes a row with read_error set; blank lines are not rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import (
    JSONL_ID_COLUMN,
    JSONL_MESSAGES_COLUMN,
    JSONL_OVERRIDES,
    JSONL_PROMPT_COLUMN,
    ColumnMap,
    DataFormat,
)
from pipeline.rows import InputRow
from pipeline.storage import InputFile, open_input


def count_rows(file: InputFile, fmt: DataFormat, storage_options: dict[str, Any]) -> int:
    """Rows in one file: from the Parquet footer, or by scanning JSONL for non-blank lines."""
    with open_input(file.url, storage_options) as handle:
        if fmt is DataFormat.PARQUET:
            return int(_parquet_file(handle, file).metadata.num_rows)
        return sum(1 for line in handle if line.strip())


def check_columns(
    files: list[InputFile], columns: ColumnMap, storage_options: dict[str, Any]
) -> dict[str, pa.DataType]:
    """Raise ValueError naming the first configured column missing from a Parquet file (and
    the columns it has). Returns the Arrow type of each carried column (from the first file)."""
    carried: dict[str, pa.DataType] = {}
    for file in files:
        with open_input(file.url, storage_options) as handle:
            schema = _parquet_file(handle, file).schema_arrow
        for name in columns.read_columns:
            if name not in schema.names:
                raise ValueError(
                    f"input column {name!r} not found in {file.name} "
                    f"(columns: {', '.join(schema.names)})"
                )
        for name in columns.carry_columns:
            carried.setdefault(name, schema.field(name).type)
    return carried


def iter_rows(
    file: InputFile,
    fmt: DataFormat,
    columns: ColumnMap,
    start: int,
    stop: int,
    first_row_index: int,
    storage_options: dict[str, Any],
    batch_rows: int = 1024,
) -> Iterator[InputRow]:
    """Rows start..stop-1 of file (positions within the file), numbered in the dataset from
    first_row_index. Parquet reads only the row groups that overlap the range."""
    if fmt is DataFormat.PARQUET:
        rows = _parquet_rows(file, columns, start, stop, storage_options, batch_rows)
    else:
        rows = _jsonl_rows(file, columns, start, stop, storage_options)
    for source_row, values, error in rows:
        yield InputRow(first_row_index + source_row - start, file.name, source_row, values, error)


_Row = tuple[int, dict[str, Any], str | None]


def _parquet_file(handle: Any, file: InputFile) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(handle)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"input file {file.name} is not readable Parquet: {exc}") from exc


def _parquet_rows(
    file: InputFile,
    columns: ColumnMap,
    start: int,
    stop: int,
    storage_options: dict[str, Any],
    batch_rows: int,
) -> Iterator[_Row]:
    with open_input(file.url, storage_options) as handle:
        parquet = _parquet_file(handle, file)
        groups: list[int] = []
        group_start = 0
        first_row = None  # file position of the first row of the first selected group
        for g in range(parquet.metadata.num_row_groups):
            group_rows = parquet.metadata.row_group(g).num_rows
            if group_start < stop and group_start + group_rows > start:
                groups.append(g)
                first_row = group_start if first_row is None else first_row
            group_start += group_rows
        if not groups:
            return
        position = first_row or 0
        names = list(columns.read_columns)
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=names):
            batch_start = position
            position += batch.num_rows
            if position <= start:
                continue
            lo, hi = max(start - batch_start, 0), min(stop - batch_start, batch.num_rows)
            if lo >= hi:
                break
            for offset, values in enumerate(batch.slice(lo, hi - lo).to_pylist()):
                yield batch_start + lo + offset, values, None
            if position >= stop:
                break


def _jsonl_rows(
    file: InputFile,
    columns: ColumnMap,
    start: int,
    stop: int,
    storage_options: dict[str, Any],
) -> Iterator[_Row]:
    with open_input(file.url, storage_options) as handle:
        source_row = 0
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if source_row >= stop:
                return
            if source_row >= start:
                values, error = parse_batch_line(line, line_number, columns.carry_columns)
                yield source_row, values, error
            source_row += 1


def parse_batch_line(
    line: bytes, line_number: int, carry_columns: tuple[str, ...] = ()
) -> tuple[dict[str, Any], str | None]:
    """One OpenAI batch line -> (column values, read error or None). Never raises."""
    values: dict[str, Any] = {JSONL_ID_COLUMN: None}
    try:
        record = json.loads(line)
    except ValueError as exc:  # also UnicodeDecodeError
        values["line"] = line.decode("utf-8", "replace")[:200]
        return values, f"line {line_number}: invalid JSON ({exc})"
    if not isinstance(record, dict):
        return values, f"line {line_number}: expected a JSON object, got {type(record).__name__}"
    values[JSONL_ID_COLUMN] = record.get(JSONL_ID_COLUMN)
    for name in carry_columns:
        value = record.get(name)
        values[name] = value if value is None or isinstance(value, str) else json.dumps(value)
    body = record.get("body")
    if not isinstance(body, dict):
        problem = "missing" if body is None else f"expected an object, got {type(body).__name__}"
        return values, f"body: {problem}"
    values[JSONL_PROMPT_COLUMN] = body.get("prompt")
    values[JSONL_MESSAGES_COLUMN] = body.get("messages")
    for name in JSONL_OVERRIDES:
        values[name] = body.get(name)
    if values["max_tokens"] is None:
        values["max_tokens"] = body.get("max_completion_tokens")
    return values, None
