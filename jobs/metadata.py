"""Materialization metadata: pipeline's plan and shard reports as Dagster metadata values.

Numbers are `MetadataValue.int`/`float`, so the UI plots them per partition and over runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import dagster as dg

from jobs.checks import ShardOutcome
from pipeline.config import JobConfig
from pipeline.plan import Plan
from pipeline.reports import ShardReport, plan_summary

Metadata = dict[str, dg.MetadataValue]
MAX_LISTED_PARTITIONS = 100  # a plan's metadata lists its partition keys up to this many


def plan_metadata(name: str, job: JobConfig, plan: Plan, keys: Sequence[str]) -> Metadata:
    """What the plan found, plus the job's full config: `generations` runs a shard from it."""
    totals = plan.totals()
    return {
        "job_name": dg.MetadataValue.text(name),
        "job_config": dg.MetadataValue.json(job.to_dict()),
        "job_fingerprint": dg.MetadataValue.text(plan.job_fingerprint),
        "output": dg.MetadataValue.path(job.output.url),
        "shards": dg.MetadataValue.int(len(plan.shards)),
        "rows": dg.MetadataValue.int(plan.num_rows),
        "invalid_rows": dg.MetadataValue.int(totals.num_errors),
        "requests": dg.MetadataValue.int(totals.num_requests),
        "tokens_in": dg.MetadataValue.int(totals.num_prompt_tokens),
        "dedup_ratio": dg.MetadataValue.float(totals.dedup_ratio),
        "predicted_hit_rate": dg.MetadataValue.float(totals.predicted_hit_rate),
        "partitions": dg.MetadataValue.json(list(keys[:MAX_LISTED_PARTITIONS])),
        "summary": dg.MetadataValue.md(f"```\n{plan_summary(plan)}\n```"),
    }


def report_from_manifest(manifest: Mapping[str, Any]) -> ShardReport:
    """The ShardReport stored in a manifest (the run that completed the shard)."""
    values = manifest["report"]
    return ShardReport(
        **{
            f.name: values[f.name]
            for f in fields(ShardReport)
            if f.name in values or f.default is MISSING
        }
    )


def shard_metadata(report: ShardReport, outcome: ShardOutcome, output_url: str) -> Metadata:
    """One shard's numbers. Run statistics (tokens, speed, cache hits) are those of the run
    in report; rows and errors are counted in the committed output, so they cover every run
    that contributed to the shard."""
    return {
        "status": dg.MetadataValue.text(report.status),
        "rows": dg.MetadataValue.int(report.num_rows),
        "rows_written": dg.MetadataValue.int(report.num_written_rows),
        "rows_resumed": dg.MetadataValue.int(report.num_resumed_rows),
        "requests": dg.MetadataValue.int(report.num_requests),
        "errors": dg.MetadataValue.int(outcome.num_errors),
        "error_rate": dg.MetadataValue.float(outcome.error_rate),
        "tokens_in": dg.MetadataValue.int(report.num_prompt_tokens),
        "tokens_cached": dg.MetadataValue.int(report.num_cached_prompt_tokens),
        "tokens_out": dg.MetadataValue.int(report.num_generated_tokens),
        "tokens_per_second": dg.MetadataValue.float(report.tokens_per_second),
        "prefix_cache_hit_rate": dg.MetadataValue.float(report.prefix_cache_hit_rate),
        "predicted_hit_rate": dg.MetadataValue.float(report.predicted_hit_rate),
        "dedup_ratio": dg.MetadataValue.float(report.dedup_ratio),
        "preemptions": dg.MetadataValue.int(report.num_preemptions),
        "spec_acceptance_length": dg.MetadataValue.float(report.mean_acceptance_length),
        "spec_draft_tokens": dg.MetadataValue.int(report.num_draft_tokens),
        "spec_accepted_tokens": dg.MetadataValue.int(report.num_accepted_tokens),
        "kv_peak_blocks": dg.MetadataValue.int(report.peak_kv_blocks),
        "kv_blocks": dg.MetadataValue.int(report.num_kv_blocks),
        "parts": dg.MetadataValue.int(report.num_parts),
        "duration_s": dg.MetadataValue.float(report.duration_s),
        "output": dg.MetadataValue.path(output_url),
    }


@dataclass(frozen=True)
class JobSummary:
    """A job's committed manifests summed up; `missing` lists shards without a manifest.
    Rows count what the manifests list; errors, tokens and times are those reported by the run
    that completed each shard (rows an earlier, interrupted run committed are not in them)."""

    name: str
    output_url: str
    num_shards: int
    reports: tuple[ShardReport, ...]  # one per complete shard, from its manifest
    num_planned_rows: int
    num_committed_rows: int
    missing: tuple[int, ...]

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.reports)

    @property
    def tokens_per_second(self) -> float:
        seconds = sum(r.duration_s for r in self.reports)
        return self.total("num_generated_tokens") / seconds if seconds > 0 else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        prompt = self.total("num_prompt_tokens")
        return self.total("num_cached_prompt_tokens") / prompt if prompt else 0.0


def summarize_job(
    name: str, output_url: str, plan: Plan, manifests: Sequence[Mapping[str, Any]]
) -> JobSummary:
    done = {int(m["shard"]): m for m in manifests}
    return JobSummary(
        name=name,
        output_url=output_url,
        num_shards=len(plan.shards),
        reports=tuple(report_from_manifest(done[i]) for i in sorted(done)),
        num_planned_rows=plan.num_rows,
        num_committed_rows=sum(int(m["num_rows"]) for m in manifests),
        missing=tuple(s.index for s in plan.shards if s.index not in done),
    )


def summary_metadata(summary: JobSummary) -> Metadata:
    lines = [
        "| shard | rows | errors | tok in | tok out | tok/s | hit | preempt | secs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.reports:
        lines.append(
            f"| {r.shard} | {r.num_rows} | {r.num_errors} | {r.num_prompt_tokens} | "
            f"{r.num_generated_tokens} | {r.tokens_per_second:.1f} | "
            f"{r.prefix_cache_hit_rate:.1%} | {r.num_preemptions} | {r.duration_s:.1f} |"
        )
    missing = ", ".join(str(i) for i in summary.missing) or "none"
    return {
        "job_name": dg.MetadataValue.text(summary.name),
        "output": dg.MetadataValue.path(summary.output_url),
        "shards": dg.MetadataValue.int(summary.num_shards),
        "shards_complete": dg.MetadataValue.int(len(summary.reports)),
        "missing_shards": dg.MetadataValue.text(missing),
        "rows_planned": dg.MetadataValue.int(summary.num_planned_rows),
        "rows_committed": dg.MetadataValue.int(summary.num_committed_rows),
        "errors": dg.MetadataValue.int(summary.total("num_errors")),
        "tokens_in": dg.MetadataValue.int(summary.total("num_prompt_tokens")),
        "tokens_out": dg.MetadataValue.int(summary.total("num_generated_tokens")),
        "tokens_per_second": dg.MetadataValue.float(summary.tokens_per_second),
        "prefix_cache_hit_rate": dg.MetadataValue.float(summary.prefix_cache_hit_rate),
        "preemptions": dg.MetadataValue.int(summary.total("num_preemptions")),
        "shards_table": dg.MetadataValue.md("\n".join(lines)),
    }
