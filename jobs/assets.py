"""The three assets of a batchgen job.

    shard_plan  --->  generations[<job>/<shard>]  --->  run_report
    (one run per job)  (one partition per shard;     (the committed manifests
                        pool "gpu", retried)          of a job, summed up)

`shard_plan` takes the job's run config (`BatchgenJobConfig`), writes ``plan.json`` (pipeline's
plan: reused when the same job was planned before), registers one dynamic partition per shard
and records the job's full config in its materialization metadata. `generations` and
`run_report` take the job from there, by the job name in the partition key, so a backfill
launched from the UI needs no run config and always runs the shards of the plan it was made
from. Every asset returns `MaterializeResult`: outputs live in object storage, not in an IO
manager.
"""

from dataclasses import replace

import dagster as dg

from jobs.checks import CHECK_SPECS, read_shard_outcome, shard_check_results
from jobs.config import BatchgenJobConfig, resolve_job
from jobs.metadata import (
    plan_metadata,
    report_from_manifest,
    shard_metadata,
    summarize_job,
    summary_metadata,
)
from jobs.partitions import SHARDS, SHARDS_NAME, job_shard_keys, parse_shard_key, shard_key
from jobs.resources import BatchgenEngine, BatchgenModel, BatchgenStorage
from pipeline import JobConfig, run_shard
from pipeline.commit import ShardOutput
from pipeline.plan import ShardPlan, ensure_plan, read_plan
from pipeline.reports import plan_summary
from pipeline.results import complete_manifests
from pipeline.storage import Store

GROUP = "batchgen"
GPU_POOL = "gpu"
# A shard resumes where it stopped, so a retry redoes at most one uncommitted part.
SHARD_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)
SHARD_PLAN_KEY = dg.AssetKey("shard_plan")


class GenerationsConfig(dg.Config):
    """max_error_rate: the error_rate_below_threshold check fails (as a warning) above it."""

    max_error_rate: float = 0.05


class RunReportConfig(dg.Config):
    """name: the job to report on; by default the one planned most recently."""

    name: str | None = None


def recorded_job(instance: dg.DagsterInstance, name: str) -> JobConfig:
    """The config of job `name` as its latest shard_plan materialization recorded it.
    dg.Failure (not retried) when the job was never planned here."""
    cursor = None
    while True:
        result = instance.fetch_materializations(SHARD_PLAN_KEY, limit=100, cursor=cursor)
        for record in result.records:
            materialization = record.asset_materialization
            metadata = materialization.metadata if materialization else {}
            if "job_name" in metadata and metadata["job_name"].value == name:
                values = metadata["job_config"].value
                assert isinstance(values, dict), "shard_plan records the config as a JSON object"
                return JobConfig.from_dict(values)
        if not result.has_more:
            break
        cursor = result.cursor
    raise dg.Failure(
        f"no plan is recorded for job {name!r}: materialize shard_plan for it first",
        allow_retries=False,
    )


def latest_job_name(instance: dg.DagsterInstance) -> str:
    result = instance.fetch_materializations(SHARD_PLAN_KEY, limit=1)
    materialization = result.records[0].asset_materialization if result.records else None
    if materialization is None:
        raise dg.Failure("no job has been planned yet: materialize shard_plan", allow_retries=False)
    return str(materialization.metadata["job_name"].value)


def planned_shard(job: JobConfig, store: Store, index: int) -> ShardPlan:
    """Shard `index` of the plan stored at the job's output; dg.Failure (not retried) when the
    plan is missing, belongs to another job, or has no such shard."""
    plan = read_plan(store)
    if plan is None or plan.job_fingerprint != job.fingerprint:
        raise dg.Failure(
            f"{store.url} holds no plan of this job (fingerprint {job.fingerprint}); "
            "materialize shard_plan again",
            allow_retries=False,
        )
    by_index = {s.index: s for s in plan.shards}
    if index not in by_index:
        raise dg.Failure(
            f"the plan at {store.url} has no shard {index} (it has {len(plan.shards)})",
            allow_retries=False,
        )
    return by_index[index]


@dg.asset(group_name=GROUP)
def shard_plan(
    context: dg.AssetExecutionContext,
    config: BatchgenJobConfig,
    batchgen_model: BatchgenModel,
    batchgen_storage: BatchgenStorage,
) -> dg.MaterializeResult:
    """Plan the job (tokenizer only, no weights), write plan.json and register one
    `generations` partition per shard."""
    try:
        name, job = resolve_job(config, batchgen_model, batchgen_storage)
    except ValueError as exc:
        raise dg.Failure(f"run config: {exc}", allow_retries=False) from None
    store = Store(job.output.url, job.storage_options)
    plan = ensure_plan(job, store)
    keys = [shard_key(name, s.index) for s in plan.shards]
    instance = context.instance
    for stale in sorted(set(job_shard_keys(instance, name)) - set(keys)):
        instance.delete_dynamic_partition(SHARDS_NAME, stale)
    instance.add_dynamic_partitions(SHARDS_NAME, keys)
    context.log.info("job %s -> %s\n%s", name, job.output.url, plan_summary(plan))
    return dg.MaterializeResult(metadata=plan_metadata(name, job, plan, keys))


@dg.asset(
    group_name=GROUP,
    partitions_def=SHARDS,
    deps=[shard_plan],
    pool=GPU_POOL,
    retry_policy=SHARD_RETRY,
    check_specs=CHECK_SPECS,
)
def generations(
    context: dg.AssetExecutionContext,
    config: GenerationsConfig,
    batchgen_engine: BatchgenEngine,
) -> dg.MaterializeResult:
    """Generate one shard and commit it; a complete shard is skipped and an interrupted one
    resumes, so rerunning a partition is always safe. Runs the three shard checks."""
    if not 0.0 <= config.max_error_rate <= 1.0:
        raise dg.Failure(
            f"max_error_rate must be in [0, 1], got {config.max_error_rate}", allow_retries=False
        )
    name, index = parse_shard_key(context.partition_key)
    job = recorded_job(context.instance, name)
    try:
        llm = batchgen_engine.llm_for(job)
    except ValueError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    store = Store(job.output.url, job.storage_options)
    shard = planned_shard(job, store, index)
    report = run_shard(llm, job, shard, store=store)
    if report.status == "skipped":
        manifest = ShardOutput(store, index, job.fingerprint).manifest()
        assert manifest is not None, "run_shard skips only complete shards"
        context.log.info("shard %s was already complete; reporting its manifest", index)
        report = replace(report_from_manifest(manifest), status="skipped")
    outcome = read_shard_outcome(store, shard, job.fingerprint)
    return dg.MaterializeResult(
        metadata=shard_metadata(report, outcome, job.output.url),
        check_results=shard_check_results(outcome, config.max_error_rate),
    )


@dg.asset(group_name=GROUP, deps=[generations])
def run_report(context: dg.AssetExecutionContext, config: RunReportConfig) -> dg.MaterializeResult:
    """Sum up the committed manifests of one job (which shards are done, rows, errors, tokens,
    speed, cache hits); shards still missing are listed, not an error."""
    name = config.name or latest_job_name(context.instance)
    job = recorded_job(context.instance, name)
    store = Store(job.output.url, job.storage_options)
    plan = read_plan(store)
    if plan is None:
        raise dg.Failure(f"{job.output.url} holds no plan", allow_retries=False)
    manifests = complete_manifests(job.output.url, job.storage_options)
    summary = summarize_job(name, job.output.url, plan, manifests)
    return dg.MaterializeResult(metadata=summary_metadata(summary))
