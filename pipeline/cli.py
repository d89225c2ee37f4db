"""The `batchgen` command line.

Each subcommand group registers itself in its own `add_*_commands(subparsers)` function and
binds a handler with `set_defaults(handler=...)`; a handler takes the parsed namespace and
returns an exit code. To add a group (e.g. `run`, `plan`), write such a function and call it
from `build_parser`. Handlers raise ValueError/RuntimeError/OSError for user-facing failures;
`main` turns those into a message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine import model_assets
from pipeline.config import JobConfig, load_job_config
from pipeline.plan import plan_job
from pipeline.reports import plan_summary
from pipeline.runner import run_job

EXIT_OK = 0
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand group registered."""
    parser = argparse.ArgumentParser(prog="batchgen", description="Offline batch LLM generation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_models_commands(subparsers)
    add_run_commands(subparsers)
    return parser


def add_models_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `batchgen models {fetch,list}`."""
    models = subparsers.add_parser("models", help="fetch and list the real models")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    fetch = actions.add_parser("fetch", help="install, verify and convert a model; print its path")
    known = ", ".join(sorted(model_assets.MODEL_ASSETS))
    fetch.add_argument("name", metavar="NAME", help=f"one of: {known}")
    fetch.add_argument("--cache-dir", default=None, help="cache root (default: $BATCHGEN_CACHE)")
    fetch.add_argument("--no-progress", action="store_true", help="hide progress bars")
    fetch.set_defaults(handler=_models_fetch)

    listing = actions.add_parser("list", help="show each known model and whether it is fetched")
    listing.add_argument("--cache-dir", default=None, help="cache root (default: $BATCHGEN_CACHE)")
    listing.set_defaults(handler=_models_list)


def _models_fetch(args: argparse.Namespace) -> int:
    path = model_assets.fetch_model(args.name, args.cache_dir, progress=not args.no_progress)
    print(path)
    return EXIT_OK


def _models_list(args: argparse.Namespace) -> int:
    names = sorted(model_assets.MODEL_ASSETS)
    width = max(len(name) for name in names)
    print(f"{'NAME':<{width}}  FETCHED  PATH")
    for name in names:
        fetched = "yes" if model_assets.is_fetched(name, args.cache_dir) else "no"
        print(f"{name:<{width}}  {fetched:<7}  {model_assets.model_dir(name, args.cache_dir)}")
    return EXIT_OK


def add_run_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `batchgen run` and `batchgen plan`: a job from --config YAML and/or flags
    (flags win over the file)."""
    run = subparsers.add_parser("run", help="run a batch generation job (resumes by default)")
    _add_job_arguments(run)
    run.add_argument("--shard", type=int, action="append", help="run only this shard (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--report-json", default=None, help="also write the job report here")
    run.set_defaults(handler=_run)

    plan = subparsers.add_parser(
        "plan", help="show shards, dedup and predicted prefix-cache hits (tokenizer only)"
    )
    _add_job_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=_plan)


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML job file (pipeline.config form)")
    parser.add_argument("--input", default=None, help="dataset URL: file, folder or glob")
    parser.add_argument("--output", default=None, help="output folder URL")
    known = ", ".join(sorted(model_assets.MODEL_ASSETS))
    parser.add_argument("--model", default=None, help=f"a registry name ({known}) or a path/URL")
    parser.add_argument("--input-format", choices=["parquet", "openai-jsonl"], default=None)
    parser.add_argument("--output-format", choices=["parquet", "openai-jsonl"], default=None)
    parser.add_argument("--id-column", default=None)
    parser.add_argument("--prompt-column", default=None)
    parser.add_argument("--messages-column", default=None)
    parser.add_argument("--carry", action="append", metavar="COLUMN", help="keep this column")
    parser.add_argument(
        "--override",
        action="append",
        metavar="PARAM=COLUMN",
        help="per-row sampling parameter from a column, e.g. max_tokens=max_new_tokens",
    )
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--logprobs", type=int, default=None, help="store sampled logprobs")
    parser.add_argument("--num-shards", type=int, default=None)
    parser.add_argument("--rows-per-shard", type=int, default=None)
    parser.add_argument(
        "--sharding-strategy",
        choices=["range", "content"],
        default=None,
        help="range: contiguous rows; content: duplicates share a shard (each shard scans all)",
    )
    parser.add_argument("--rows-per-part", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true", default=None, help="redo all shards")
    parser.add_argument("--no-dedup", action="store_true", help="generate duplicates again")
    parser.add_argument("--no-prefix-grouping", action="store_true", help="keep input order")
    parser.add_argument("--kv-cache-dtype", choices=["auto", "int8"], default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--num-blocks", type=int, default=None)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint")
    parser.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec option (VALUE parsed as YAML); credentials come from the environment",
    )


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def job_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config dict (pipeline.config form) that the given flags set."""
    import yaml

    sections: dict[str, dict[str, Any]] = {
        "input": {
            "url": args.input,
            "format": args.input_format,
            "id_column": args.id_column,
            "prompt_column": args.prompt_column,
            "messages_column": args.messages_column,
            "carry_columns": args.carry,
            "override_columns": _pairs(args.override, "--override") or None,
        },
        "output": {
            "url": args.output,
            "format": args.output_format,
            "rows_per_part": args.rows_per_part,
            "overwrite": args.overwrite,
        },
        "sampling": {
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "seed": args.seed,
            "stop": args.stop,
            "logprobs": args.logprobs,
        },
        "sharding": {
            "num_shards": args.num_shards,
            "rows_per_shard": args.rows_per_shard,
            "strategy": args.sharding_strategy,
        },
        "grouping": {
            "dedup": False if args.no_dedup else None,
            "prefix_grouping": False if args.no_prefix_grouping else None,
        },
        "engine": {
            "kv_cache_dtype": args.kv_cache_dtype,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "block_size": args.block_size,
            "max_num_seqs": args.max_num_seqs,
            "num_blocks": args.num_blocks,
            "enable_prefix_caching": False if args.no_prefix_caching else None,
            "device": args.device,
            "dtype": args.dtype,
        },
        "storage_options": {
            "endpoint_url": args.endpoint_url,
            **{
                k: yaml.safe_load(v)
                for k, v in _pairs(args.storage_option, "--storage-option").items()
            },
        },
    }
    overrides: dict[str, Any] = {
        name: {k: v for k, v in values.items() if v is not None}
        for name, values in sections.items()
    }
    overrides = {name: values for name, values in overrides.items() if values}
    if args.model is not None:
        overrides["model"] = args.model
    return overrides


def job_config_from_args(args: argparse.Namespace) -> JobConfig:
    """--config YAML with the flags on top, or the flags alone."""
    overrides = job_overrides_from_args(args)
    if args.config is not None:
        return load_job_config(args.config, overrides)
    return JobConfig.from_dict(overrides)


def _run(args: argparse.Namespace) -> int:
    config = job_config_from_args(args)
    report = run_job(config, shards=args.shard, progress=not args.no_progress)
    print(report.summary())
    if args.report_json:
        Path(args.report_json).write_text(json.dumps(report.to_dict(), indent=1))
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    plan = plan_job(job_config_from_args(args))
    print(plan.to_json().decode() if args.json else plan_summary(plan))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `batchgen` console script; returns the process exit code.

    argparse itself exits (code 2) on malformed arguments and (code 0) on --help.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handled: tuple[type[BaseException], ...] = (
        ValueError,
        RuntimeError,
        OSError,
        *_storage_errors(),
    )
    try:
        return int(handler(args))
    except handled as exc:
        print(f"batchgen: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _storage_errors() -> tuple[type[BaseException], ...]:
    """Errors object storage clients raise outside OSError (an unreachable S3 endpoint)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return ()
    return (BotoCoreError, ClientError)
