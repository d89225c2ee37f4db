"""The job plan: which files, how they are cut into shards, and per shard the rows, errors,
dedup ratio and predicted prefix-cache hit rate — computed with the tokenizer only, never the
model weights, and written to ``<output>/plan.json`` before any generation.

The plan pins the shards: a rerun reads the stored plan instead of re-cutting, after checking
that it belongs to the same job (config fingerprint) and that the input files are unchanged
(same names and sizes). Two runners racing to write it agree: the write is put-if-absent and
the loser adopts the winner's plan.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import zip_longest
from typing import Any

from engine import RequestError
from engine.tokenizer import PromptEncoder
from pipeline.config import DataFormat, JobConfig, ShardingStrategy
from pipeline.grouping import dedup_ratio, group_requests, order_requests, predict_cached_tokens
from pipeline.readers import check_columns, count_rows, iter_rows
from pipeline.rows import PreparedRow, PromptKind, RowRequest, prepare_rows
from pipeline.sharding import Segment, ShardSpec, num_shards_for, split_into_shards
from pipeline.storage import InputFile, Store, list_dataset

PLAN_FILE = "plan.json"
PLAN_VERSION = 1


@dataclass(frozen=True)
class ShardStats:
    """What a shard holds and what dedup and prefix grouping should save on it."""

    num_rows: int
    num_errors: int  # rows that fail validation or tokenization
    num_requests: int  # unique requests the engine will run
    num_prompt_tokens: int  # over the unique requests
    num_predicted_cached_tokens: int

    @property
    def dedup_ratio(self) -> float:
        return dedup_ratio(self.num_rows - self.num_errors, self.num_requests, self.num_rows)

    @property
    def predicted_hit_rate(self) -> float:
        if not self.num_prompt_tokens:
            return 0.0
        return self.num_predicted_cached_tokens / self.num_prompt_tokens

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["dedup_ratio"] = round(self.dedup_ratio, 6)
        values["predicted_hit_rate"] = round(self.predicted_hit_rate, 6)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ShardStats:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ShardPlan:
    spec: ShardSpec
    stats: ShardStats

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def num_rows(self) -> int:
        return self.stats.num_rows


@dataclass(frozen=True)
class Plan:
    job_fingerprint: str
    files: tuple[tuple[InputFile, int], ...]  # each file with its row count, in dataset order
    shards: tuple[ShardPlan, ...]
    block_size: int
    created_at: float

    @property
    def num_rows(self) -> int:
        return sum(n for _, n in self.files)

    def totals(self) -> ShardStats:
        return ShardStats(
            *(
                sum(getattr(s.stats, f) for s in self.shards)
                for f in ShardStats.__dataclass_fields__
            )
        )

    def to_json(self) -> bytes:
        totals = self.totals()
        document = {
            "version": PLAN_VERSION,
            "job_fingerprint": self.job_fingerprint,
            "created_at": self.created_at,
            "block_size": self.block_size,
            "num_rows": self.num_rows,
            "num_shards": len(self.shards),
            "dedup_ratio": round(totals.dedup_ratio, 6),
            "predicted_hit_rate": round(totals.predicted_hit_rate, 6),
            "files": [
                {"url": f.url, "name": f.name, "size": f.size, "num_rows": n} for f, n in self.files
            ],
            "shards": [
                {
                    "index": s.index,
                    "strategy": s.spec.strategy.value,
                    "segments": [seg.to_dict() for seg in s.spec.segments],
                    **s.stats.to_dict(),
                }
                for s in self.shards
            ],
        }
        return json.dumps(document, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Plan:
        document = json.loads(data)
        if document.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {document.get('version')!r} is not {PLAN_VERSION}")
        files = tuple(
            (InputFile(f["url"], f["name"], f["size"]), f["num_rows"]) for f in document["files"]
        )
        shards = tuple(
            ShardPlan(
                ShardSpec(
                    s["index"],
                    len(document["shards"]),
                    ShardingStrategy(s["strategy"]),
                    tuple(Segment.from_dict(seg) for seg in s["segments"]),
                ),
                ShardStats.from_dict(s),
            )
            for s in document["shards"]
        )
        return cls(
            document["job_fingerprint"],
            files,
            shards,
            document["block_size"],
            document["created_at"],
        )


def list_input(config: JobConfig) -> list[InputFile]:
    """The dataset's files; FileNotFoundError naming the URL when there are none."""
    return list_dataset(config.input.url, config.input.format.suffixes, config.storage_options)


def load_shard_rows(config: JobConfig, spec: ShardSpec) -> list[PreparedRow]:
    """Read and prepare every row of the shard, in dataset order (content sharding reads
    every row of the dataset and keeps the shard's)."""
    columns = config.input.columns
    rows = (
        row
        for seg in spec.segments
        for row in iter_rows(
            seg.file,
            config.input.format,
            columns,
            seg.start,
            seg.stop,
            seg.first_row_index,
            config.storage_options,
            config.input.batch_rows,
        )
    )
    return [r for r in prepare_rows(rows, columns, config.sampling) if spec.selects(r)]


def encode_request(encoder: PromptEncoder, request: RowRequest) -> list[int]:
    """Token ids as the engine will see them; RequestError when the tokenizer rejects it."""
    if request.kind is PromptKind.TEXT:
        return encoder.encode_text(request.prompt)
    return encoder.encode_messages(list(request.messages or ()))


def shard_stats(config: JobConfig, rows: list[PreparedRow], encoder: PromptEncoder) -> ShardStats:
    """Tokenize the shard's unique requests in submission order and predict its hit rate."""
    unique = group_requests(rows, config.grouping.dedup)
    ordered = order_requests(unique, config.grouping.prefix_grouping)
    counts = {"errors": sum(1 for r in rows if r.error is not None), "requests": 0, "tokens": 0}

    def token_lists() -> Iterator[list[int]]:
        # one prompt's ids at a time: holding a whole shard's would cost ~7 KB per row
        for item in ordered:
            try:
                token_ids = encode_request(encoder, item.request)
            except RequestError:
                counts["errors"] += len(item.rows)
                continue
            counts["requests"] += 1
            counts["tokens"] += len(token_ids)
            yield token_ids

    cached = predict_cached_tokens(token_lists(), config.engine.block_size)
    return ShardStats(
        num_rows=len(rows),
        num_errors=counts["errors"],
        num_requests=counts["requests"],
        num_prompt_tokens=counts["tokens"],
        num_predicted_cached_tokens=cached,
    )


def plan_job(config: JobConfig, tokenizer: Any = None) -> Plan:
    """List and check the input, cut it into shards and compute each shard's stats. Loads the
    tokenizer when none is given, never the weights. Raises FileNotFoundError/ValueError for
    a missing or unreadable dataset or a missing column."""
    files = list_input(config)
    if config.input.format is DataFormat.PARQUET:
        check_columns(files, config.input.columns, config.storage_options)
    counted = [(f, count_rows(f, config.input.format, config.storage_options)) for f in files]
    total = sum(n for _, n in counted)
    specs = split_into_shards(
        counted, num_shards_for(total, config.sharding), config.sharding.strategy
    )
    if tokenizer is None:
        from pipeline.model_loading import load_job_tokenizer

        tokenizer = load_job_tokenizer(config)
    encoder = PromptEncoder(tokenizer)
    shards = tuple(
        ShardPlan(spec, shard_stats(config, load_shard_rows(config, spec), encoder))
        for spec in specs
    )
    return Plan(config.fingerprint, tuple(counted), shards, config.engine.block_size, time.time())


def read_plan(store: Store) -> Plan | None:
    """The stored plan, or None when there is none yet."""
    if not store.exists(PLAN_FILE):
        return None
    return Plan.from_json(store.read_bytes(PLAN_FILE))


def ensure_plan(
    config: JobConfig,
    store: Store | None = None,
    tokenizer_factory: Callable[[], Any] | None = None,
) -> Plan:
    """The job's plan: the stored one if it matches this job and input, else a new one written
    put-if-absent. With config.output.overwrite, any stored plan is replaced. This is what an
    orchestrator calls once before running shards (each `run_shard` takes a `ShardPlan`).
    ValueError when the output holds another job's plan or the input changed since."""
    store = store or Store(config.output.url, config.storage_options)
    if config.output.overwrite:
        store.delete(PLAN_FILE)
    else:
        existing = read_plan(store)
        if existing is not None:
            return _check_stored(existing, config, store)
    plan = plan_job(config, tokenizer_factory() if tokenizer_factory else None)
    if store.put_if_absent(PLAN_FILE, plan.to_json()):
        return plan
    stored = read_plan(store)
    assert stored is not None
    return _check_stored(stored, config, store)


def _check_stored(plan: Plan, config: JobConfig, store: Store) -> Plan:
    if plan.job_fingerprint != config.fingerprint:
        raise ValueError(
            f"output {store.url} holds another job's results (fingerprint "
            f"{plan.job_fingerprint}, this job {config.fingerprint}); choose another output "
            "or set output.overwrite"
        )
    planned = [(f.name, f.size) for f, _ in plan.files]
    current = [(f.name, f.size) for f in list_input(config)]
    if planned != current:
        changed = next(a or b for a, b in zip_longest(planned, current) if a != b)
        raise ValueError(
            f"input {config.input.url} changed since the plan was written (first difference: "
            f"{changed}); set output.overwrite to start over"
        )
    return plan
