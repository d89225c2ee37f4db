"""Asset checks of one shard's committed output, as plain functions of a `ShardOutcome` so
they can be called directly; `generations` runs them right after its shard commits.

- rows_in_equals_rows_out: the plan's row count == the manifest's == the rows read back from
  the parts the manifest lists (no row lost, none doubled). An incomplete shard fails.
- error_rate_below_threshold: error rows / rows <= max_error_rate (a run config value).
- no_unexpected_empty_generations: a row without error must have text. Empty text is expected
  only with finish_reason "error", or "length" after zero tokens.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from pipeline.commit import ShardOutput
from pipeline.plan import ShardPlan
from pipeline.storage import Store

ROWS_MATCH = "rows_in_equals_rows_out"
ERROR_RATE = "error_rate_below_threshold"
NO_EMPTY = "no_unexpected_empty_generations"
MAX_LISTED_IDS = 5


@dataclass(frozen=True)
class OutputRow:
    """The fields of one committed output record the checks look at."""

    id: str
    text: str | None
    finish_reason: str
    error: str | None
    num_generated_tokens: int

    @property
    def is_unexpected_empty(self) -> bool:
        if self.error is not None or self.finish_reason == "error" or self.text:
            return False
        return not (self.finish_reason == "length" and self.num_generated_tokens == 0)


@dataclass(frozen=True)
class ShardOutcome:
    """What one shard committed, next to what the plan said it holds."""

    shard: int
    num_planned_rows: int
    num_manifest_rows: int | None  # None while the shard has no manifest
    rows: tuple[OutputRow, ...]  # read back from the parts the manifest lists

    @property
    def num_errors(self) -> int:
        return sum(1 for r in self.rows if r.error is not None)

    @property
    def error_rate(self) -> float:
        return self.num_errors / len(self.rows) if self.rows else 0.0

    @property
    def unexpected_empty_ids(self) -> list[str]:
        return [r.id for r in self.rows if r.is_unexpected_empty]


def read_shard_outcome(store: Store, shard: ShardPlan, job_fingerprint: str) -> ShardOutcome:
    """Read the shard's manifest and every part it lists (only those: orphans are not trusted)."""
    output = ShardOutput(store, shard.index, job_fingerprint)
    manifest = output.manifest()
    if manifest is None:
        return ShardOutcome(shard.index, shard.num_rows, None, ())
    rows: list[OutputRow] = []
    for part in manifest["parts"]:
        data = store.read_bytes(f"{output.dir}/parts/{part['name']}")
        rows.extend(_parquet_rows(data) if part["name"].endswith(".parquet") else _jsonl_rows(data))
    return ShardOutcome(shard.index, shard.num_rows, int(manifest["num_rows"]), tuple(rows))


def _parquet_rows(data: bytes) -> list[OutputRow]:
    columns = ["id", "text", "finish_reason", "error", "num_generated_tokens"]
    table = pq.read_table(io.BytesIO(data), columns=columns)
    return [OutputRow(**values) for values in table.to_pylist()]


def _jsonl_rows(data: bytes) -> list[OutputRow]:
    rows = []
    for line in data.splitlines():
        if not line.strip():
            continue
        record: dict[str, Any] = json.loads(line)
        error = record.get("error")
        body = (record.get("response") or {}).get("body") or {}
        choice = (body.get("choices") or [{}])[0]
        rows.append(
            OutputRow(
                id=record["custom_id"],
                text=(choice.get("message") or {}).get("content"),
                finish_reason=choice.get("finish_reason") or ("error" if error else ""),
                error=error["message"] if error else None,
                num_generated_tokens=(body.get("usage") or {}).get("completion_tokens", 0),
            )
        )
    return rows


def check_rows_in_equal_rows_out(outcome: ShardOutcome) -> dg.AssetCheckResult:
    manifest_rows = outcome.num_manifest_rows
    passed = manifest_rows is not None and (
        outcome.num_planned_rows == manifest_rows == len(outcome.rows)
    )
    if manifest_rows is None:
        description = f"shard {outcome.shard} has no manifest: it is not complete"
    elif passed:
        description = f"all {manifest_rows} planned rows are committed once"
    else:
        description = (
            f"shard {outcome.shard}: planned {outcome.num_planned_rows} rows, manifest lists "
            f"{manifest_rows}, parts hold {len(outcome.rows)}"
        )
    return dg.AssetCheckResult(
        check_name=ROWS_MATCH,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "rows_in": dg.MetadataValue.int(outcome.num_planned_rows),
            "rows_out": dg.MetadataValue.int(manifest_rows if manifest_rows is not None else 0),
            "rows_read": dg.MetadataValue.int(len(outcome.rows)),
        },
    )


def check_error_rate(outcome: ShardOutcome, max_error_rate: float) -> dg.AssetCheckResult:
    rate = outcome.error_rate
    return dg.AssetCheckResult(
        check_name=ERROR_RATE,
        passed=rate <= max_error_rate,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{outcome.num_errors} of {len(outcome.rows)} rows are errors "
            f"({rate:.1%}; threshold {max_error_rate:.1%})"
        ),
        metadata={
            "errors": dg.MetadataValue.int(outcome.num_errors),
            "error_rate": dg.MetadataValue.float(rate),
            "max_error_rate": dg.MetadataValue.float(max_error_rate),
        },
    )


def check_no_unexpected_empty(outcome: ShardOutcome) -> dg.AssetCheckResult:
    empty = outcome.unexpected_empty_ids
    listed = ", ".join(empty[:MAX_LISTED_IDS]) + (" ..." if len(empty) > MAX_LISTED_IDS else "")
    return dg.AssetCheckResult(
        check_name=NO_EMPTY,
        passed=not empty,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{len(empty)} rows have empty text without an error: {listed}"
            if empty
            else "every row without an error has text"
        ),
        metadata={"empty_generations": dg.MetadataValue.int(len(empty))},
    )


def shard_check_results(outcome: ShardOutcome, max_error_rate: float) -> list[dg.AssetCheckResult]:
    return [
        check_rows_in_equal_rows_out(outcome),
        check_error_rate(outcome, max_error_rate),
        check_no_unexpected_empty(outcome),
    ]


CHECK_SPECS = [
    dg.AssetCheckSpec(ROWS_MATCH, asset="generations", description="rows in == rows out"),
    dg.AssetCheckSpec(ERROR_RATE, asset="generations", description="error rate <= threshold"),
    dg.AssetCheckSpec(NO_EMPTY, asset="generations", description="no silent empty generations"),
]
