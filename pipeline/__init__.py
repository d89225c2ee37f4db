"""batchgen's data pipeline: read a Parquet/JSONL dataset over fsspec, shard it, deduplicate and
group shared prefixes, stream it through the engine and commit results resumably.

Entry points: `JobConfig` (and `load_job_config`), `plan_job` (a dry plan), `ensure_plan` (the
stored plan), `run_job`, `run_shard`;
`read_result_table` / `iter_result_records` read committed results.
"""

from pipeline.config import JobConfig, load_job_config
from pipeline.plan import Plan, ShardPlan, ensure_plan, plan_job
from pipeline.reports import JobReport, ShardReport
from pipeline.results import iter_result_records, read_result_table
from pipeline.runner import run_job, run_shard

__all__ = [
    "JobConfig",
    "JobReport",
    "Plan",
    "ShardPlan",
    "ShardReport",
    "ensure_plan",
    "iter_result_records",
    "load_job_config",
    "plan_job",
    "read_result_table",
    "run_job",
    "run_shard",
]
