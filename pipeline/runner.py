"""Running a job: `run_job` (plan, load the model once, run every pending shard) and `run_shard`
(one shard through the engine, committed part by part).

Call order inside run_shard, and why:
1. A complete shard (manifest present) is skipped; with output.overwrite it is cleared first.
2. Rows are read and validated; ids already in committed parts are dropped (resume).
3. Invalid rows are written as error records at once; they never reach the engine.
4. Valid rows are deduplicated and ordered by shared prefix; a background thread tokenizes in
   that order while the engine streams; each completion fans out to its rows' records.
5. Parts commit every output.rows_per_part records, on a writer thread so that storage latency
   does not pause the engine (at most 2 parts wait for it); the manifest is written last.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pyarrow as pa

from engine import LLM, Completion, GenerationRequest, RequestError, SamplingParams
from engine.tokenizer import PromptEncoder
from pipeline.commit import PartWriter, ShardOutput
from pipeline.config import DataFormat, JobConfig
from pipeline.grouping import UniqueRequest, group_requests, order_requests
from pipeline.model_loading import load_job_llm
from pipeline.plan import ShardPlan, ensure_plan, load_shard_rows
from pipeline.progress import RunProgress
from pipeline.readers import check_columns
from pipeline.records import (
    OutputRecord,
    PartEncoder,
    completion_record,
    error_record,
    params_fingerprint,
)
from pipeline.reports import JobReport, ShardReport, metrics_delta
from pipeline.rows import PreparedRow
from pipeline.storage import Store
from pipeline.tokenize_ahead import TokenizeAhead

logger = logging.getLogger(__name__)


def run_job(
    config: JobConfig,
    llm: LLM | None = None,
    shards: Sequence[int] | None = None,
    progress: bool = False,
) -> JobReport:
    """Plan (or reuse the stored plan), then run the selected shards (default: all) that are
    not complete. The model loads only if some shard has work, and after the plan, so a bad
    dataset or column fails fast. A given llm must be of config.model; it is reused as is."""
    started = time.perf_counter()
    store = Store(config.output.url, config.storage_options)
    given = llm
    plan = ensure_plan(config, store, (lambda: given.tokenizer) if given is not None else None)
    by_index = {s.index: s for s in plan.shards}
    unknown = sorted(set(shards or ()) - by_index.keys())
    if unknown:
        raise ValueError(f"shards: no shard {unknown[0]} (the plan has {len(plan.shards)})")
    selected = [by_index[i] for i in sorted(set(shards))] if shards is not None else plan.shards
    pending = {
        s.index
        for s in selected
        if config.output.overwrite
        or not ShardOutput(store, s.index, plan.job_fingerprint).is_complete()
    }
    load_s = 0.0
    if pending and llm is None:
        llm = load_job_llm(config)
        load_s = llm.load_seconds
    bar = RunProgress(sum(s.num_rows for s in selected), progress)
    reports = []
    try:
        for shard in selected:
            if shard.index in pending:
                assert llm is not None
                reports.append(run_shard(llm, config, shard, store=store, progress=bar))
            else:
                bar.advance(shard.num_rows)
                reports.append(
                    ShardReport.skipped(shard.index, shard.num_rows, shard.stats.predicted_hit_rate)
                )
    finally:
        bar.close()
    return JobReport(
        config.output.url,
        plan.job_fingerprint,
        tuple(reports),
        load_s,
        time.perf_counter() - started,
    )


def run_shard(
    llm: LLM,
    config: JobConfig,
    shard: ShardPlan,
    *,
    store: Store | None = None,
    progress: RunProgress | None = None,
) -> ShardReport:
    """Generate and commit one shard (see the module docstring); returns what this run did.
    Safe to rerun after a crash at any point: committed rows are skipped, none is repeated."""
    started = time.perf_counter()
    store = store or Store(config.output.url, config.storage_options)
    bar = progress or RunProgress(0, enabled=False)
    output = ShardOutput(store, shard.index, config.fingerprint)
    if config.output.overwrite:
        output.clear()
    elif output.is_complete():
        bar.advance(shard.num_rows)
        return ShardReport.skipped(shard.index, shard.num_rows, shard.stats.predicted_hit_rate)
    done = output.committed_ids()
    rows = load_shard_rows(config, shard.spec)
    todo = [r for r in rows if r.row_id not in done]
    bar.advance(len(rows) - len(todo))
    encoder = PartEncoder(
        config.output.format,
        config.model,
        _carried_types(config, shard),
        with_logprobs=config.sampling.logprobs is not None,
    )
    writer = PartWriter(output, encoder, config.output.rows_per_part)
    try:
        carry = config.input.carry_columns
        invalid = [error_record(r, r.error, carry) for r in todo if r.error is not None]
        writer.add(invalid)
        bar.advance(len(invalid))
        unique = group_requests(todo, config.grouping.dedup)
        ordered = order_requests(unique, config.grouping.prefix_grouping)
        before = replace(llm.metrics)
        num_failed = 0
        for records, num_generated in _generate(llm, config, ordered):
            writer.add(records)
            num_failed += sum(1 for r in records if r.error is not None)
            bar.advance(len(records), num_generated)
        writer.flush()
    finally:
        writer.close()
    delta = metrics_delta(before, llm.metrics)
    num_valid = len(todo) - len(invalid)
    report = ShardReport(
        shard=shard.index,
        status="generated",
        num_rows=len(rows),
        num_resumed_rows=len(rows) - len(todo),
        num_written_rows=writer.num_rows,
        num_errors=len(invalid) + num_failed,
        num_requests=len(unique),
        dedup_ratio=(num_valid - len(unique)) / len(todo) if todo else 0.0,
        num_prompt_tokens=delta.num_prompt_tokens,
        num_cached_prompt_tokens=delta.num_cached_prompt_tokens,
        num_computed_tokens=delta.num_computed_tokens,
        num_generated_tokens=delta.num_generated_tokens,
        num_preemptions=delta.num_preemptions,
        num_parts=writer.num_parts,
        duration_s=time.perf_counter() - started,
        predicted_hit_rate=shard.stats.predicted_hit_rate,
        num_draft_tokens=delta.num_draft_tokens,
        num_accepted_tokens=delta.num_accepted_tokens,
        num_verified_sequences=delta.num_verified_sequences,
        peak_kv_blocks=delta.peak_blocks_used,
        num_kv_blocks=delta.num_blocks,
    )
    output.finalize((r.row_id for r in rows), report.to_dict())
    return report


def _generate(
    llm: LLM, config: JobConfig, requests: Sequence[UniqueRequest]
) -> Iterator[tuple[list[OutputRecord], int]]:
    """Run the requests in order; yield each finished request's records (one per row it
    serves) and its generated token count."""
    carry = config.input.carry_columns
    run = uuid.uuid4().hex  # tags our request ids, see _ours
    fingerprints: dict[SamplingParams, str] = {}
    failed: list[tuple[UniqueRequest, str]] = []  # tokenizer rejections, drained in order

    def feed(items: Iterator[tuple[int, list[int] | RequestError]]) -> Iterator[GenerationRequest]:
        for position, result in items:
            if isinstance(result, RequestError):
                failed.append((requests[position], str(result)))
                continue
            yield GenerationRequest(
                prompt_token_ids=result,
                sampling_params=requests[position].request.params,
                request_id=(run, position),
            )

    def drain_failed() -> Iterator[tuple[list[OutputRecord], int]]:
        while failed:
            unique, message = failed.pop(0)
            yield _error_records(unique.rows, message, carry), 0

    def records_of(completion: Completion) -> list[OutputRecord]:
        unique = requests[completion.request_id[1]]
        if completion.error is not None:
            return _error_records(unique.rows, completion.error, carry)
        params = unique.request.params
        if params not in fingerprints:
            fingerprints[params] = params_fingerprint(
                config.model, config.engine.kv_cache_dtype, params
            )
        return [
            completion_record(row, completion, carry, fingerprints[params], is_duplicate=i > 0)
            for i, row in enumerate(unique.rows)
        ]

    encoder = PromptEncoder(llm.tokenizer)
    with TokenizeAhead(encoder, [u.request for u in requests]) as ahead:
        for completion in llm.stream(feed(iter(ahead))):
            yield from drain_failed()
            if _ours(completion, run):
                yield records_of(completion), len(completion.token_ids)
        yield from drain_failed()


def _ours(completion: Completion, run: str) -> bool:
    """Whether a completion belongs to this run. A stream abandoned by an exception leaves its
    requests in the engine; they finish during the next stream and must not be taken for that
    stream's requests."""
    request_id = completion.request_id
    if isinstance(request_id, tuple) and len(request_id) == 2 and request_id[0] == run:
        return True
    logger.warning("ignoring a completion of an abandoned run: %r", request_id)
    return False


def _error_records(
    rows: Sequence[PreparedRow], message: str, carry: Sequence[str]
) -> list[OutputRecord]:
    return [error_record(row, f"row {row.row.row_index}: {message}", carry) for row in rows]


def _carried_types(config: JobConfig, shard: ShardPlan) -> dict[str, pa.DataType]:
    carry = config.input.carry_columns
    if config.input.format is DataFormat.OPENAI_JSONL:
        return {name: pa.string() for name in carry}
    if not carry or not shard.spec.segments:
        return {name: pa.null() for name in carry}
    return check_columns(
        [shard.spec.segments[0].file], config.input.columns, config.storage_options
    )
