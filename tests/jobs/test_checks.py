"""The shard checks called directly on outputs committed by pipeline's own writer (no engine):
Parquet and OpenAI-JSONL parts, error rates around the threshold, empty generations."""

from pathlib import Path

import pytest

from jobs.checks import (
    ERROR_RATE,
    NO_EMPTY,
    ROWS_MATCH,
    OutputRow,
    ShardOutcome,
    check_error_rate,
    check_no_unexpected_empty,
    read_shard_outcome,
    shard_check_results,
)
from pipeline.commit import PartWriter, ShardOutput
from pipeline.config import DataFormat, ShardingStrategy
from pipeline.plan import ShardPlan, ShardStats
from pipeline.records import OutputRecord, PartEncoder
from pipeline.sharding import ShardSpec
from pipeline.storage import Store

FINGERPRINT = "0123456789abcdef"


def record(
    row_id: str,
    text: str | None,
    finish_reason: str = "length",
    error: str | None = None,
    num_generated_tokens: int = 4,
) -> OutputRecord:
    return OutputRecord(
        id=row_id,
        row_index=int(row_id.rsplit("-", 1)[-1]),
        carried={},
        text=text,
        finish_reason=finish_reason,
        error=error,
        num_prompt_tokens=5,
        num_generated_tokens=num_generated_tokens,
        num_cached_tokens=0,
        is_duplicate=False,
        logprobs=None,
        params_fingerprint=None if error else "p",
    )


def planned(num_rows: int) -> ShardPlan:
    return ShardPlan(
        ShardSpec(0, 1, ShardingStrategy.RANGE, ()),
        ShardStats(num_rows, 0, num_rows, 5 * num_rows, 0),
    )


def commit_shard(root: Path, fmt: DataFormat, records: list[OutputRecord]) -> Store:
    """Commit records as shard 0 in two parts and write its manifest, as run_shard would."""
    store = Store(str(root))
    output = ShardOutput(store, 0, FINGERPRINT)
    writer = PartWriter(output, PartEncoder(fmt, "m", {}, with_logprobs=False), rows_per_part=2)
    with writer:
        writer.add(records)
        writer.flush()
    output.finalize((r.id for r in records), {"shard": 0})
    return store


GOOD = [record("row-0", "Hi"), record("row-1", "Red."), record("row-2", "One, two")]
BAD = record("row-3", None, "error", error="row 3: prompt: empty", num_generated_tokens=0)


@pytest.mark.parametrize("fmt", [DataFormat.PARQUET, DataFormat.OPENAI_JSONL])
def test_outcome_reads_rows_back_from_the_listed_parts_of_either_format(
    tmp_path: Path, fmt: DataFormat
) -> None:
    store = commit_shard(tmp_path, fmt, [*GOOD, BAD])
    outcome = read_shard_outcome(store, planned(4), FINGERPRINT)
    assert outcome.num_manifest_rows == 4
    assert [r.id for r in outcome.rows] == ["row-0", "row-1", "row-2", "row-3"]
    assert outcome.rows[1] == OutputRow("row-1", "Red.", "length", None, 4)
    assert outcome.num_errors == 1 and outcome.rows[3].error == "row 3: prompt: empty"
    results = {r.check_name: r.passed for r in shard_check_results(outcome, 0.25)}
    assert results == {ROWS_MATCH: True, ERROR_RATE: True, NO_EMPTY: True}


def test_rows_check_fails_when_the_plan_holds_more_rows_than_were_committed(
    tmp_path: Path,
) -> None:
    store = commit_shard(tmp_path, DataFormat.PARQUET, GOOD)
    outcome = read_shard_outcome(store, planned(4), FINGERPRINT)
    [rows, *_] = shard_check_results(outcome, 0.05)
    assert rows.check_name == ROWS_MATCH and not rows.passed
    assert "planned 4 rows, manifest lists 3, parts hold 3" in (rows.description or "")


def test_orphan_parts_are_not_read(tmp_path: Path) -> None:
    store = commit_shard(tmp_path, DataFormat.PARQUET, GOOD)
    orphan = PartEncoder(DataFormat.PARQUET, "m", {}, with_logprobs=False).encode([BAD])
    store.write_new("shards/00000/parts/zz-orphan.parquet", orphan)
    outcome = read_shard_outcome(store, planned(3), FINGERPRINT)
    assert len(outcome.rows) == 3 and outcome.num_errors == 0


@pytest.mark.parametrize(
    ("num_errors", "passed"), [(0, True), (1, True), (2, False)], ids=["none", "at", "over"]
)
def test_error_rate_check_passes_up_to_the_threshold(num_errors: int, passed: bool) -> None:
    rows = [OutputRow(f"row-{i}", "x", "length", None, 1) for i in range(10 - num_errors)]
    rows += [OutputRow(f"err-{i}", None, "error", "bad", 0) for i in range(num_errors)]
    outcome = ShardOutcome(0, 10, 10, tuple(rows))
    result = check_error_rate(outcome, max_error_rate=0.1)
    assert result.passed is passed
    assert result.metadata["error_rate"].value == pytest.approx(num_errors / 10)


def test_empty_text_is_flagged_unless_the_row_failed_or_generated_nothing_by_length() -> None:
    rows = (
        OutputRow("ok", "text", "stop", None, 2),
        OutputRow("failed", None, "error", "engine: too long", 0),
        OutputRow("zero-length", "", "length", None, 0),
        OutputRow("eos-first", "", "stop", None, 1),
        OutputRow("blank", None, "length", None, 4),
    )
    result = check_no_unexpected_empty(ShardOutcome(0, 5, 5, rows))
    assert not result.passed
    assert result.metadata["empty_generations"].value == 2
    assert "eos-first, blank" in (result.description or "")


def test_checks_of_an_incomplete_shard_fail_rows_and_pass_the_rest() -> None:
    outcome = ShardOutcome(0, 3, None, ())
    results = {r.check_name: r.passed for r in shard_check_results(outcome, 0.05)}
    assert results == {ROWS_MATCH: False, ERROR_RATE: True, NO_EMPTY: True}
