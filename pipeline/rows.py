"""What one input row becomes: a stable id plus either a valid request or an error naming the
field at fault. No row is ever dropped — an invalid row still gets an id and an output record.

Errors read ``row 17: messages[0].role: missing``: the row's position in the dataset (files in
plan order, counted from 0), then the field (a column, or a path inside messages), then what is
wrong. Only the first problem of a row is reported.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from engine import RequestError, SamplingParams
from engine.tokenizer import validate_messages
from pipeline.config import ColumnMap, canonical_json, sampling_to_dict

_INT_PARAMS = frozenset(f.name for f in fields(SamplingParams) if f.type in ("int", "int | None"))


@dataclass(frozen=True)
class InputRow:
    """One row as a reader returns it. values maps each read column to its Python value;
    read_error is set when the reader could not parse the row at all (a bad JSONL line)."""

    row_index: int  # position in the whole dataset
    source: str  # InputFile.name of the file it came from
    source_row: int  # position within that file
    values: Mapping[str, Any]
    read_error: str | None = None


class PromptKind(enum.Enum):
    TEXT = "text"
    CHAT = "chat"


@dataclass(frozen=True)
class RowRequest:
    """A valid row's request: exactly one of prompt (TEXT) or messages (CHAT), and the row's
    effective sampling params (job defaults + its override columns)."""

    kind: PromptKind
    prompt: str | None
    messages: tuple[Mapping[str, str], ...] | None
    params: SamplingParams

    @property
    def dedup_key(self) -> str | None:
        """Equal keys mean equal outputs; None when params sample non-deterministically."""
        if not self.params.deterministic:
            return None
        content = self.prompt if self.kind is PromptKind.TEXT else list(self.messages or ())
        key = canonical_json([self.kind.value, content, sampling_to_dict(self.params)])
        return hashlib.sha256(key.encode()).hexdigest()

    @property
    def order_key(self) -> str:
        """Sorts requests that share a leading text (system prompt, few-shot block) together;
        chats sort apart from plain prompts since the chat template changes their tokens."""
        if self.kind is PromptKind.TEXT:
            return "\x1d" + (self.prompt or "")
        return "".join(f"\x1e{m['role']}\x1f{m['content']}" for m in self.messages or ())


@dataclass(frozen=True)
class PreparedRow:
    """An input row with its id and exactly one of request or error."""

    row: InputRow
    row_id: str
    request: RowRequest | None
    error: str | None

    def __post_init__(self) -> None:
        assert (self.request is None) != (self.error is None), "exactly one of request, error"


class _RowError(Exception):
    """Internal: the row is invalid; the message names the field."""


def content_id(row: InputRow) -> str:
    """An id from the row's content and its place (file, row in file): stable across reruns,
    distinct for identical rows."""
    payload = canonical_json([row.source, row.source_row, dict(row.values), row.read_error])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def prepare_row(row: InputRow, columns: ColumnMap, defaults: SamplingParams) -> PreparedRow:
    """Give the row its id and check it; never raises for bad data."""
    row_id, id_error = _row_id(row, columns)
    try:
        if row.read_error is not None:
            raise _RowError(row.read_error)
        if id_error is not None:
            raise _RowError(id_error)
        request = _request(row.values, columns, defaults)
    except _RowError as exc:
        return PreparedRow(row, row_id, None, f"row {row.row_index}: {exc}")
    return PreparedRow(row, row_id, request, None)


def prepare_rows(
    rows: Iterable[InputRow], columns: ColumnMap, defaults: SamplingParams
) -> Iterator[PreparedRow]:
    """prepare_row for each row, lazily; a user id seen before in these rows becomes an error
    on the later row, whose id gets a ``#row<N>`` suffix so every output id stays unique."""
    first_seen: dict[str, int] = {}
    for row in rows:
        item = prepare_row(row, columns, defaults)
        seen = first_seen.setdefault(item.row_id, row.row_index)
        if seen != row.row_index:
            item = PreparedRow(
                row,
                f"{item.row_id}#row{row.row_index}",
                None,
                f"row {row.row_index}: {columns.id_column}: duplicate id {item.row_id!r} "
                f"(first at row {seen})",
            )
        yield item


def _row_id(row: InputRow, columns: ColumnMap) -> tuple[str, str | None]:
    if columns.id_column is None:
        return content_id(row), None
    value = row.values.get(columns.id_column)
    if value is None or value == "":
        return content_id(row), f"{columns.id_column}: missing"
    if isinstance(value, bool) or not isinstance(value, str | int):
        return content_id(row), (
            f"{columns.id_column}: expected a string or integer, got {type(value).__name__}"
        )
    return str(value), None


def _request(values: Mapping[str, Any], columns: ColumnMap, defaults: SamplingParams) -> RowRequest:
    column = columns.messages_column
    messages = values.get(column) if column else None
    if column is not None and messages is not None:
        return RowRequest(
            PromptKind.CHAT,
            None,
            _messages(messages, column),
            _params(values, columns, defaults),
        )
    if columns.prompt_column is None:
        raise _RowError(f"{columns.messages_column}: missing")
    prompt = _prompt(values.get(columns.prompt_column), columns)
    if columns.apply_chat_template:
        user = ({"role": "user", "content": prompt},)
        return RowRequest(PromptKind.CHAT, None, user, _params(values, columns, defaults))
    return RowRequest(PromptKind.TEXT, prompt, None, _params(values, columns, defaults))


def _prompt(value: Any, columns: ColumnMap) -> str:
    name = columns.prompt_column
    if value is None:
        also = f" (and {columns.messages_column} is null)" if columns.messages_column else ""
        raise _RowError(f"{name}: missing{also}")
    if not isinstance(value, str):
        raise _RowError(f"{name}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _RowError(f"{name}: empty")
    return value


def _messages(value: Any, column: str) -> tuple[Mapping[str, str], ...]:
    """Checked chat messages; errors name the column and the element (``chat[2].role``)."""
    if isinstance(value, str):  # a JSON-encoded chat in a string column
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise _RowError(f"{column}: invalid JSON ({exc})") from None
    try:
        checked = validate_messages(value)
    except RequestError as exc:
        problem = str(exc)  # the engine names the field "messages..."
        raise _RowError(column + problem.removeprefix("messages")) from None
    for i, message in enumerate(checked):
        if not message["content"].strip() and message["role"] != "assistant":
            raise _RowError(f"{column}[{i}].content: empty")
    return tuple(checked)


def _params(
    values: Mapping[str, Any], columns: ColumnMap, defaults: SamplingParams
) -> SamplingParams:
    overrides: dict[str, Any] = {}
    for param, column in columns.override_columns:
        value = values.get(column)
        if value is None:
            continue
        if param in _INT_PARAMS and isinstance(value, float) and value.is_integer():
            value = int(value)  # integer columns with nulls often arrive as floats
        if param == "stop" and isinstance(value, list):
            value = tuple(value)
        overrides[param] = value
    if not overrides:
        return defaults
    try:
        return SamplingParams.from_mapping(overrides, defaults)
    except (ValueError, TypeError) as exc:
        field = _failed_param(str(exc), overrides)
        label = dict(columns.override_columns).get(field, field)
        raise _RowError(f"{label}: {exc}") from None


def _failed_param(message: str, overrides: Mapping[str, Any]) -> str:
    for param in overrides:
        if message.startswith(param):
            return param
    return next(iter(overrides))
