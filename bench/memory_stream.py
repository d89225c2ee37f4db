"""Peak memory of the pipeline side of a 1M-row job: plan, read, validate, dedup and group,
tokenize, and write, up to the engine boundary. No model weights are loaded and nothing is
generated; the engine's input (`GenerationRequest`s with token ids) is counted at the boundary.

    python -m bench.memory_stream [--num-rows 1000000] [--rows-per-shard 50000] [--json PATH]

1. The dataset is written to a temp folder (this process, streamed in row groups): ids, a
   carried column, chats under 4 shared system prompts and plain prompts under 3 shared
   few-shot prefixes, lognormal lengths (~150 tokens on average), ~15% exact duplicates of a
   recent row under a new id.
2. A fresh child process (so its peak is the pipeline's alone) does, with SmolLM2's tokenizer:
   - `ensure_plan`: list and count the files, cut shards, and per shard read, validate, dedup,
     order and tokenize every unique request to predict prefix hits; plan.json written.
   - per shard, what `run_shard` does around the engine: read the shard's rows, drop committed
     ids, error records for invalid rows, `group_requests` + `order_requests`, `TokenizeAhead`
     on its background thread feeding `GenerationRequest`s to the boundary, and one output
     record per row (no text: nothing was generated) through `PartWriter` (parts + commit
     records) and `ShardOutput.finalize` (the manifest).
   It reports its peak RSS (getrusage ru_maxrss) after imports and the tokenizer, after the
   plan and at the end, and the time of each phase.

The pipeline holds one shard's rows at a time (ShardingConfig says so), so the peak follows
rows_per_shard, not the dataset's size. Target (issue): peak RSS < 2 GB at 1M rows.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = (
    "the of and to in is that for it as was with be by on not this are or from at which but "
    "have an they you were her she there one all we can will your more when about out up "
    "what some time so into other than then them these could make like him two first been "
    "its who now people my made over did down only way find use may water long little very "
    "after words called just where most know get through back much go good new write our me "
    "man too any day same right look think also around another came come work three word "
    "must because does part even place well such here take why things help put years "
    "different away again off went old number great tell men say small every found still "
    "between name should home big give air line set own under read last never us left end "
    "along while might next sound below saw something thought both few those always looked "
    "show large often together asked house don world going want school important until form "
    "food keep children feet land side without boy once animals life enough took sometimes "
    "four head above kind began almost live page got earth need far hand high year mother "
    "light parts country father let night following picture being study second eyes soon "
    "times story boys since white days ever paper hard near sentence better best across "
    "during today others however sure means knew its try told young miles sun ways thing "
    "whole hear example heard several change answer room sea against top turned learn point "
    "city play toward five using himself usually money seen car morning river invoice refund "
    "customer order shipping delivery account password battery screen warranty recipe "
    "chicken garlic oven minutes python function error database query server latency"
).split()

SYSTEM_PROMPTS = (
    "You are a careful support agent for an online shop. Classify the customer's message "
    "into one of: billing, shipping, returns, account, product question, other. Answer with "
    "the label only.",
    "You are a helpful assistant. Answer the user's question accurately and concisely. If "
    "you are not sure, say so. Prefer short paragraphs and avoid unnecessary preamble. Use "
    "plain language a high school student would understand, and give one concrete example "
    "whenever the question is about a concept rather than a fact.",
    "You extract structured data. Read the text and return a JSON object with the keys "
    "name, date, amount and currency; use null for anything that is missing.",
    "You are a translation engine. Translate the user's text into French. Keep names, "
    "numbers and formatting unchanged, and do not add explanations.",
)
FEW_SHOT_PREFIXES = (
    "Rate the sentiment of each review from 1 to 5.\nReview: The battery died after two "
    "days and support never answered.\nRating: 1\nReview: Exactly as described, fast "
    "delivery, would buy again.\nRating: 5\nReview: ",
    "Summarize the following text in one sentence.\n\nText: ",
    "Question answering. Use only the passage to answer.\n\nPassage and question: ",
)
TOPICS = ("support", "qa", "extraction", "translation", "sentiment", "summary", "reading")


def _text(rng: random.Random, median_words: float) -> str:
    num_words = max(3, min(800, int(rng.lognormvariate(math.log(median_words), 0.7))))
    return " ".join(rng.choices(WORDS, k=num_words))


def _row(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.6:
        system = rng.randrange(len(SYSTEM_PROMPTS))
        chat = [
            {"role": "system", "content": SYSTEM_PROMPTS[system]},
            {"role": "user", "content": _text(rng, 70)},
        ]
        return {"prompt": None, "messages": chat, "topic": TOPICS[system]}
    prefix = rng.randrange(len(FEW_SHOT_PREFIXES))
    prompt = FEW_SHOT_PREFIXES[prefix] + _text(rng, 90)
    return {"prompt": prompt, "messages": None, "topic": TOPICS[4 + prefix]}


SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        (
            "messages",
            pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
        ),
        ("topic", pa.string()),
    ]
)


def write_dataset(
    path: Path, num_rows: int, duplicate_rate: float = 0.15, rows_per_group: int = 50_000
) -> dict[str, int]:
    """Write the dataset in row groups; a duplicate repeats a row of the last 5000 under a new
    id (so range shards see it). Returns row and duplicate counts."""
    rng = random.Random(0)
    recent: list[dict[str, Any]] = []
    num_duplicates = 0
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for start in range(0, num_rows, rows_per_group):
            rows = []
            for i in range(start, min(start + rows_per_group, num_rows)):
                if recent and rng.random() < duplicate_rate:
                    row = dict(rng.choice(recent))
                    num_duplicates += 1
                else:
                    row = _row(rng)
                    recent.append(row)
                    if len(recent) > 5000:
                        recent[rng.randrange(len(recent))] = recent.pop()
                rows.append({**row, "id": f"r{i:08d}"})
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
    return {"num_rows": num_rows, "num_duplicates": num_duplicates}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(dataset: Path, output: Path, model: str, rows_per_shard: int) -> dict[str, Any]:
    """The child's work (see the module docstring); returns its measurements."""
    started = time.perf_counter()
    from engine import GenerationRequest
    from engine.tokenizer import PromptEncoder
    from pipeline.commit import PartWriter, ShardOutput
    from pipeline.config import JobConfig
    from pipeline.grouping import group_requests, order_requests
    from pipeline.model_loading import load_job_tokenizer
    from pipeline.plan import ensure_plan, load_shard_rows
    from pipeline.records import OutputRecord, PartEncoder, error_record
    from pipeline.storage import Store
    from pipeline.tokenize_ahead import TokenizeAhead

    config = JobConfig.from_dict(
        {
            "model": model,
            "input": {
                "url": str(dataset),
                "id_column": "id",
                "prompt_column": "prompt",
                "messages_column": "messages",
                "carry_columns": ["topic"],
            },
            "output": {"url": str(output)},
            "sampling": {"max_tokens": 64, "temperature": 0.0},
            "sharding": {"rows_per_shard": rows_per_shard},
        }
    )
    tokenizer = load_job_tokenizer(config)
    result: dict[str, Any] = {"baseline_peak_rss_mib": _peak_rss_mib()}
    result["import_s"] = time.perf_counter() - started

    started = time.perf_counter()
    store = Store(config.output.url, config.storage_options)
    plan = ensure_plan(config, store, lambda: tokenizer)
    totals = plan.totals()
    result.update(
        plan_s=time.perf_counter() - started,
        plan_peak_rss_mib=_peak_rss_mib(),
        num_shards=len(plan.shards),
        num_rows=plan.num_rows,
        plan_requests=totals.num_requests,
        plan_dedup_ratio=totals.dedup_ratio,
        plan_predicted_hit_rate=totals.predicted_hit_rate,
    )

    started = time.perf_counter()
    encoder = PromptEncoder(tokenizer)
    carry = config.input.carry_columns
    num_requests = num_prompt_tokens = num_records = 0
    for shard in plan.shards:
        output_dir = ShardOutput(store, shard.index, config.fingerprint)
        done = output_dir.committed_ids()
        rows = [r for r in load_shard_rows(config, shard.spec) if r.row_id not in done]
        part_encoder = PartEncoder(
            config.output.format, config.model, {"topic": pa.string()}, False
        )
        writer = PartWriter(output_dir, part_encoder, config.output.rows_per_part)
        writer.add(error_record(r, r.error, carry) for r in rows if r.error is not None)
        ordered = order_requests(
            group_requests(rows, config.grouping.dedup), config.grouping.prefix_grouping
        )
        with TokenizeAhead(encoder, [u.request for u in ordered]) as ahead:
            for position, token_ids in ahead:
                unique = ordered[position]
                if not isinstance(token_ids, list):
                    writer.add(error_record(r, str(token_ids), carry) for r in unique.rows)
                    continue
                request = GenerationRequest(
                    prompt_token_ids=token_ids,
                    sampling_params=unique.request.params,
                    request_id=position,
                )
                num_requests += 1  # the engine boundary: this is what llm.stream would take
                num_prompt_tokens += len(request.prompt_token_ids)
                writer.add(
                    OutputRecord(
                        id=row.row_id,
                        row_index=row.row.row_index,
                        carried={name: row.row.values.get(name) for name in carry},
                        text=None,
                        finish_reason="not_generated",
                        error=None,
                        num_prompt_tokens=len(token_ids),
                        num_generated_tokens=0,
                        num_cached_tokens=0,
                        is_duplicate=i > 0,
                        logprobs=None,
                        params_fingerprint=None,
                    )
                    for i, row in enumerate(unique.rows)
                )
        writer.flush()
        writer.close()
        num_records += writer.num_rows
        output_dir.finalize((r.row_id for r in rows), {})
    if num_records != plan.num_rows or num_requests != totals.num_requests:
        raise RuntimeError(
            f"streamed {num_records} records and {num_requests} requests; the plan has "
            f"{plan.num_rows} rows and {totals.num_requests} requests"
        )
    result.update(
        stream_s=time.perf_counter() - started,
        peak_rss_mib=_peak_rss_mib(),
        stream_requests=num_requests,
        stream_prompt_tokens=num_prompt_tokens,
        stream_records=num_records,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-shard", type=int, default=50_000)
    parser.add_argument("--model", default=None, help="default: the fetched SmolLM2 folder")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--measure", nargs=2, metavar=("DATASET", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        from engine.model_assets import is_fetched, model_dir

        args.model = str(model_dir("smollm2")) if is_fetched("smollm2") else "smollm2"
    if args.measure:
        dataset, output = (Path(p) for p in args.measure)
        print(json.dumps(measure(dataset, output, args.model, args.rows_per_shard)))
        return

    with tempfile.TemporaryDirectory(prefix="batchgen-memory-") as tmp:
        dataset = Path(tmp) / "prompts.parquet"
        started = time.perf_counter()
        written = write_dataset(dataset, args.num_rows)
        generate_s = time.perf_counter() - started
        child = subprocess.run(
            [sys.executable, "-m", "bench.memory_stream", "--measure", str(dataset),
             str(Path(tmp) / "out"), "--model", args.model,
             "--rows-per-shard", str(args.rows_per_shard)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        result = {
            **written,
            "rows_per_shard": args.rows_per_shard,
            "dataset_mib": dataset.stat().st_size / 2**20,
            "generate_s": generate_s,
            **json.loads(child.stdout.strip().splitlines()[-1]),
        }
    for key, value in result.items():
        print(f"{key:>26}: {value:,.3f}" if isinstance(value, float) else f"{key:>26}: {value:,}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
