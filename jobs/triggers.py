"""Asset jobs, sensors and the schedule that launch batchgen runs.

- `batchgen_new_inputs` (sensor): every Parquet/JSONL file that appears under
  `batchgen_storage.input_url` becomes a job of its own, named after the file, writing to
  ``<output root>/<name>``; the sensor requests its plan run. Cursor: the URLs seen so far.
- `batchgen_pending_shards` (sensor): requests one `generations` run per registered shard that
  has no materialization yet (run key = partition key, so each shard is requested once; the
  "gpu" pool decides how many run at a time).
- `batchgen_daily_plan` (schedule, an example): plans the configured job every day at 02:00
  into a dated output (``daily-YYYY-MM-DD``).
All three start stopped; turn them on in the UI (Automation).
"""

import json

import dagster as dg

from jobs.assets import generations, shard_plan
from jobs.config import BatchgenJobConfig
from jobs.partitions import SHARDS_NAME, job_name_from_url
from jobs.resources import BatchgenStorage
from pipeline.config import DataFormat
from pipeline.storage import InputFile

PLAN_JOB = dg.define_asset_job(
    "batchgen_plan", selection=[shard_plan], description="Plan a job and register its shards."
)
GENERATE_JOB = dg.define_asset_job(
    "batchgen_generate",
    selection=[generations],
    description="Generate shards (one partition per shard) and check them.",
)


def plan_run_config(config: BatchgenJobConfig) -> dg.RunConfig:
    return dg.RunConfig(ops={"shard_plan": config})


def job_for_file(
    file: InputFile, storage: BatchgenStorage, job_file: str | None
) -> BatchgenJobConfig:
    """The job a new input file becomes: named after its path under the watched prefix."""
    name = job_name_from_url(file.name.replace("/", "-"))
    fmt = DataFormat.OPENAI_JSONL if file.url.endswith(".jsonl") else DataFormat.PARQUET
    return BatchgenJobConfig(
        name=name,
        job_file=job_file,
        input={"url": file.url, "format": fmt.value},
        output={"url": storage.job_output_url(name)},
    )


def build_input_sensor(job_file: str | None) -> dg.SensorDefinition:
    """The new-file sensor; job_file (a job YAML) supplies every section the file does not."""

    @dg.sensor(
        name="batchgen_new_inputs",
        job=PLAN_JOB,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
    )
    def batchgen_new_inputs(
        context: dg.SensorEvaluationContext, batchgen_storage: BatchgenStorage
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            files = batchgen_storage.list_inputs()
        except FileNotFoundError as exc:
            return dg.SkipReason(str(exc))
        seen = set(json.loads(context.cursor)) if context.cursor else set()
        new = [f for f in files if f.url not in seen]
        if not new:
            return dg.SkipReason(f"no new files under {batchgen_storage.input_url}")
        requests = [
            dg.RunRequest(
                run_key=f.url,
                run_config=plan_run_config(job_for_file(f, batchgen_storage, job_file)),
            )
            for f in new
        ]
        cursor = json.dumps(sorted(seen | {f.url for f in new}))
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return batchgen_new_inputs


@dg.sensor(
    name="batchgen_pending_shards",
    asset_selection=[generations],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def pending_shards_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """One run per registered shard without a materialization, each requested once."""
    registered = context.instance.get_dynamic_partitions(SHARDS_NAME)
    done = context.instance.get_materialized_partitions(generations.key)
    requests = [
        dg.RunRequest(run_key=key, partition_key=key) for key in registered if key not in done
    ]
    return dg.SensorResult(run_requests=requests)


def build_daily_schedule(job_file: str | None) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="batchgen_daily_plan",
        cron_schedule="0 2 * * *",
        job=PLAN_JOB,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def batchgen_daily_plan(
        context: dg.ScheduleEvaluationContext, batchgen_storage: BatchgenStorage
    ) -> dg.RunRequest:
        name = f"daily-{context.scheduled_execution_time:%Y-%m-%d}"
        config = BatchgenJobConfig(
            name=name, job_file=job_file, output={"url": batchgen_storage.job_output_url(name)}
        )
        return dg.RunRequest(run_key=name, run_config=plan_run_config(config))

    return batchgen_daily_plan
