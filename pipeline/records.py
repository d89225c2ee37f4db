"""Output records and their encoding into part files (Parquet or OpenAI batch JSONL).

Every input row yields exactly one `OutputRecord`: a generation (possibly copied from an
identical row's, `is_duplicate`) or an error. Parquet columns, in order::

    id, row_index, <carried columns...>, text, finish_reason, error, num_prompt_tokens,
    num_generated_tokens, num_cached_tokens, is_duplicate, [logprobs], model, params_fingerprint

OpenAI JSONL lines follow the Batch API output: ``{id, custom_id, response: {status_code,
request_id, body: {choices: [{message: {role: "assistant", content}}], usage}}, error}``, with a
failed row as ``response: null, error: {code, message}``; our extra fields go under
``metadata``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine import Completion, FinishReason, SamplingParams
from pipeline.config import DataFormat, canonical_json, sampling_to_dict
from pipeline.rows import PreparedRow

RESERVED_COLUMNS = (
    "id",
    "row_index",
    "text",
    "finish_reason",
    "error",
    "num_prompt_tokens",
    "num_generated_tokens",
    "num_cached_tokens",
    "is_duplicate",
    "logprobs",
    "model",
    "params_fingerprint",
)


@dataclass(frozen=True)
class OutputRecord:
    id: str
    row_index: int
    carried: Mapping[str, Any]
    text: str | None
    finish_reason: str
    error: str | None
    num_prompt_tokens: int
    num_generated_tokens: int
    num_cached_tokens: int
    is_duplicate: bool
    logprobs: tuple[float, ...] | None
    params_fingerprint: str | None


def params_fingerprint(model: str, kv_cache_dtype: str, params: SamplingParams) -> str:
    """Identifies what decided a generation besides its prompt."""
    key = canonical_json([model, kv_cache_dtype, sampling_to_dict(params)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _carried(row: PreparedRow, carry_columns: Sequence[str]) -> dict[str, Any]:
    return {name: row.row.values.get(name) for name in carry_columns}


def completion_record(
    row: PreparedRow,
    completion: Completion,
    carry_columns: Sequence[str],
    fingerprint: str,
    is_duplicate: bool,
) -> OutputRecord:
    """The record of a row whose request the engine finished (completion.error must be None)."""
    assert completion.error is None
    logprobs = (
        tuple(lp.logprob for lp in completion.logprobs) if completion.logprobs is not None else None
    )
    return OutputRecord(
        id=row.row_id,
        row_index=row.row.row_index,
        carried=_carried(row, carry_columns),
        text=completion.text,
        finish_reason=completion.finish_reason.value,
        error=None,
        num_prompt_tokens=len(completion.prompt_token_ids),
        num_generated_tokens=len(completion.token_ids),
        num_cached_tokens=0 if is_duplicate else completion.num_cached_tokens,
        is_duplicate=is_duplicate,
        logprobs=logprobs,
        params_fingerprint=fingerprint,
    )


def error_record(row: PreparedRow, error: str, carry_columns: Sequence[str]) -> OutputRecord:
    """The record of a row that could not run; error names the row and the field."""
    return OutputRecord(
        id=row.row_id,
        row_index=row.row.row_index,
        carried=_carried(row, carry_columns),
        text=None,
        finish_reason=FinishReason.ERROR.value,
        error=error,
        num_prompt_tokens=0,
        num_generated_tokens=0,
        num_cached_tokens=0,
        is_duplicate=False,
        logprobs=None,
        params_fingerprint=None,
    )


class PartEncoder:
    """Encodes a list of records into the bytes of one part file of the configured format.

    carried_types: Arrow type per carried column, so every part of a job has one schema.
    with_logprobs adds the logprobs column.
    """

    def __init__(
        self,
        fmt: DataFormat,
        model: str,
        carried_types: Mapping[str, pa.DataType],
        with_logprobs: bool,
    ) -> None:
        clash = sorted(set(carried_types) & set(RESERVED_COLUMNS))
        if clash:
            raise ValueError(
                f"input.carry_columns: {clash[0]!r} is also an output column; rename it"
            )
        self.format = fmt
        self.model = model
        self.carried_types = dict(carried_types)
        self.with_logprobs = with_logprobs

    @property
    def suffix(self) -> str:
        return ".parquet" if self.format is DataFormat.PARQUET else ".jsonl"

    def encode(self, records: Sequence[OutputRecord]) -> bytes:
        if self.format is DataFormat.PARQUET:
            return self._parquet(records)
        lines = [json.dumps(self._openai(r), ensure_ascii=False) for r in records]
        return ("\n".join(lines) + "\n").encode()

    def schema(self) -> pa.Schema:
        fields = [pa.field("id", pa.string(), nullable=False), pa.field("row_index", pa.int64())]
        fields += [pa.field(n, t) for n, t in self.carried_types.items()]
        fields += [
            pa.field("text", pa.string()),
            pa.field("finish_reason", pa.string()),
            pa.field("error", pa.string()),
            pa.field("num_prompt_tokens", pa.int32()),
            pa.field("num_generated_tokens", pa.int32()),
            pa.field("num_cached_tokens", pa.int32()),
            pa.field("is_duplicate", pa.bool_()),
        ]
        if self.with_logprobs:
            fields.append(pa.field("logprobs", pa.list_(pa.float32())))
        fields += [pa.field("model", pa.string()), pa.field("params_fingerprint", pa.string())]
        return pa.schema(fields)

    def _parquet(self, records: Sequence[OutputRecord]) -> bytes:
        schema = self.schema()
        columns: dict[str, list[Any]] = {name: [] for name in schema.names}
        for r in records:
            columns["id"].append(r.id)
            columns["row_index"].append(r.row_index)
            for name in self.carried_types:
                columns[name].append(r.carried.get(name))
            columns["text"].append(r.text)
            columns["finish_reason"].append(r.finish_reason)
            columns["error"].append(r.error)
            columns["num_prompt_tokens"].append(r.num_prompt_tokens)
            columns["num_generated_tokens"].append(r.num_generated_tokens)
            columns["num_cached_tokens"].append(r.num_cached_tokens)
            columns["is_duplicate"].append(r.is_duplicate)
            if self.with_logprobs:
                columns["logprobs"].append(list(r.logprobs) if r.logprobs is not None else None)
            columns["model"].append(self.model)
            columns["params_fingerprint"].append(r.params_fingerprint)
        table = pa.Table.from_pydict(columns, schema=schema)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    def _openai(self, r: OutputRecord) -> dict[str, Any]:
        request_hash = hashlib.sha256(r.id.encode()).hexdigest()[:24]
        metadata = {
            "row_index": r.row_index,
            "is_duplicate": r.is_duplicate,
            "num_cached_tokens": r.num_cached_tokens,
            "params_fingerprint": r.params_fingerprint,
            **{k: _jsonable(v) for k, v in r.carried.items()},
        }
        line: dict[str, Any] = {"id": f"batch_req_{request_hash}", "custom_id": r.id}
        if r.error is not None:
            line["response"] = None
            line["error"] = {"code": "invalid_request", "message": r.error}
        else:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": r.text},
                "finish_reason": r.finish_reason,
            }
            if r.logprobs is not None:
                choice["logprobs"] = {"content": [{"logprob": lp} for lp in r.logprobs]}
            line["response"] = {
                "status_code": 200,
                "request_id": f"req_{request_hash}",
                "body": {
                    "id": f"chatcmpl-{request_hash}",
                    "object": "chat.completion",
                    "model": self.model,
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": r.num_prompt_tokens,
                        "completion_tokens": r.num_generated_tokens,
                        "total_tokens": r.num_prompt_tokens + r.num_generated_tokens,
                    },
                },
            }
            line["error"] = None
        line["metadata"] = metadata
        return line


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
