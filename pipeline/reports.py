"""What a run did: per-shard and per-job reports (rows, tokens in/out, tokens/s, prefix-cache
hit rate, dedup ratio, preemptions, errors, duration), and the CLI's printed summary. The same
dicts go into shard manifests and, later, Dagster materialization metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from engine import RunMetrics
from engine.metrics import mean_acceptance_length
from pipeline.plan import Plan


def metrics_delta(before: RunMetrics, after: RunMetrics) -> RunMetrics:
    """after - before for the cumulative counters (peak/num_blocks are taken from after)."""
    delta = replace(after)
    for f in fields(RunMetrics):
        if f.name not in ("peak_blocks_used", "num_blocks"):
            setattr(delta, f.name, getattr(after, f.name) - getattr(before, f.name))
    return delta


@dataclass(frozen=True)
class ShardReport:
    shard: int
    status: str  # "generated", or "skipped" when the shard was already complete
    num_rows: int  # rows of the shard
    num_resumed_rows: int  # rows already committed by an earlier run, not redone
    num_written_rows: int  # rows committed by this run
    num_errors: int  # error rows committed by this run
    num_requests: int  # unique requests the engine ran
    dedup_ratio: float  # share of this run's rows served by another row's generation
    num_prompt_tokens: int
    num_cached_prompt_tokens: int
    num_computed_tokens: int
    num_generated_tokens: int
    num_preemptions: int
    num_parts: int
    duration_s: float
    predicted_hit_rate: float
    num_draft_tokens: int = 0  # speculative decoding: drafts verified
    num_accepted_tokens: int = 0
    num_verified_sequences: int = 0
    peak_kv_blocks: int = 0  # KV blocks in use at the busiest step (engine-wide)
    num_kv_blocks: int = 0

    @property
    def mean_acceptance_length(self) -> float:
        return mean_acceptance_length(self.num_accepted_tokens, self.num_verified_sequences)

    @property
    def tokens_per_second(self) -> float:
        return self.num_generated_tokens / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        if not self.num_prompt_tokens:
            return 0.0
        return self.num_cached_prompt_tokens / self.num_prompt_tokens

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["tokens_per_second"] = round(self.tokens_per_second, 3)
        values["prefix_cache_hit_rate"] = round(self.prefix_cache_hit_rate, 6)
        values["mean_acceptance_length"] = round(self.mean_acceptance_length, 6)
        return values

    @classmethod
    def skipped(cls, shard: int, num_rows: int, predicted_hit_rate: float) -> ShardReport:
        zeros: dict[str, Any] = {
            f.name: 0
            for f in fields(cls)
            if f.name not in ("shard", "status", "num_rows", "num_resumed_rows")
        }
        zeros["predicted_hit_rate"] = predicted_hit_rate
        return cls(
            shard=shard, status="skipped", num_rows=num_rows, num_resumed_rows=num_rows, **zeros
        )


@dataclass(frozen=True)
class JobReport:
    output_url: str
    job_fingerprint: str
    shards: tuple[ShardReport, ...]
    model_load_s: float
    duration_s: float

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.shards)

    @property
    def num_rows(self) -> int:
        return self.total("num_rows")

    @property
    def num_errors(self) -> int:
        return self.total("num_errors")

    @property
    def tokens_per_second(self) -> float:
        seconds = sum(s.duration_s for s in self.shards)
        return self.total("num_generated_tokens") / seconds if seconds > 0 else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        prompt = self.total("num_prompt_tokens")
        return self.total("num_cached_prompt_tokens") / prompt if prompt else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_url": self.output_url,
            "job_fingerprint": self.job_fingerprint,
            "model_load_s": round(self.model_load_s, 3),
            "duration_s": round(self.duration_s, 3),
            "num_rows": self.num_rows,
            "num_errors": self.num_errors,
            "tokens_per_second": round(self.tokens_per_second, 3),
            "prefix_cache_hit_rate": round(self.prefix_cache_hit_rate, 6),
            "shards": [s.to_dict() for s in self.shards],
        }

    def summary(self) -> str:
        """A table per shard plus totals, for the terminal."""
        header = (
            f"{'shard':>5} {'status':>9} {'rows':>7} {'resumed':>7} {'errors':>6} {'reqs':>6} "
            f"{'dedup':>6} {'tok in':>8} {'tok out':>8} {'tok/s':>8} {'hit':>6} {'pred':>6} "
            f"{'preempt':>7} {'secs':>7}"
        )
        lines = [header]
        for s in self.shards:
            lines.append(
                f"{s.shard:>5} {s.status:>9} {s.num_rows:>7} {s.num_resumed_rows:>7} "
                f"{s.num_errors:>6} {s.num_requests:>6} {s.dedup_ratio:>6.1%} "
                f"{s.num_prompt_tokens:>8} {s.num_generated_tokens:>8} "
                f"{s.tokens_per_second:>8.1f} {s.prefix_cache_hit_rate:>6.1%} "
                f"{s.predicted_hit_rate:>6.1%} {s.num_preemptions:>7} {s.duration_s:>7.1f}"
            )
        lines.append(
            f"total: {self.num_rows} rows, {self.num_errors} errors, "
            f"{self.total('num_prompt_tokens')} prompt tokens "
            f"({self.prefix_cache_hit_rate:.1%} from the prefix cache), "
            f"{self.total('num_generated_tokens')} generated at {self.tokens_per_second:.1f} "
            f"tok/s; model load {self.model_load_s:.1f}s, job {self.duration_s:.1f}s"
        )
        lines.append(f"output: {self.output_url}")
        return "\n".join(lines)


def plan_summary(plan: Plan) -> str:
    """A table of the plan's shards plus totals, for the terminal."""
    lines = [
        f"{len(plan.files)} file(s), {plan.num_rows} rows, {len(plan.shards)} shard(s); "
        f"KV block size {plan.block_size}",
        f"{'shard':>5} {'rows':>7} {'errors':>6} {'reqs':>6} {'dedup':>6} {'tok in':>8} {'pred hit':>8}",
    ]
    for s in plan.shards:
        st = s.stats
        lines.append(
            f"{s.index:>5} {st.num_rows:>7} {st.num_errors:>6} {st.num_requests:>6} "
            f"{st.dedup_ratio:>6.1%} {st.num_prompt_tokens:>8} {st.predicted_hit_rate:>8.1%}"
        )
    t = plan.totals()
    lines.append(
        f"total: {t.num_rows} rows, {t.num_errors} invalid, {t.num_requests} requests to run "
        f"(dedup saves {t.dedup_ratio:.1%}), {t.num_prompt_tokens} prompt tokens, "
        f"predicted prefix-cache hit rate {t.predicted_hit_rate:.1%}"
    )
    return "\n".join(lines)
