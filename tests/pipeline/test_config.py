from __future__ import annotations

from pathlib import Path

import pytest

from engine import SamplingParams
from pipeline.cli import build_parser, job_config_from_args
from pipeline.config import (
    DataFormat,
    JobConfig,
    ShardingStrategy,
    load_job_config,
)

MINIMAL = {"model": "smollm2", "input": {"url": "in.parquet"}, "output": {"url": "out"}}


def test_minimal_dict_gets_greedy_defaults_and_a_prompt_column():
    config = JobConfig.from_dict(MINIMAL)
    assert config.sampling.temperature == 0.0 and config.sampling.deterministic
    assert config.input.format is DataFormat.PARQUET
    assert config.input.columns.prompt_column == "prompt"
    assert config.sharding.strategy is ShardingStrategy.RANGE


def test_dict_round_trips_through_to_dict():
    config = JobConfig.from_dict(
        {
            **MINIMAL,
            "input": {
                "url": "s3://bucket/data/",
                "messages_column": "chat",
                "carry_columns": ["topic"],
                "override_columns": {"max_tokens": "max_new", "seed": "seed"},
            },
            "sampling": {"max_tokens": 9, "stop": ["\n\n"]},
            "sharding": {"rows_per_shard": 100, "strategy": "content"},
            "engine": {"kv_cache_dtype": "int8", "block_size": 32},
            "storage_options": {"endpoint_url": "http://127.0.0.1:9000"},
        }
    )
    assert JobConfig.from_dict(config.to_dict()) == config
    assert config.sampling.stop == ("\n\n",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": {"url": "x", "promt_column": "p"}}, "input.promt_column: unknown key"),
        ({"input": {"url": ""}}, "input.url must be a non-empty string"),
        ({"input": {"url": "x", "format": "csv"}}, "input.format must be one of"),
        ({"output": {"url": "o", "rows_per_part": 0}}, "output.rows_per_part must be a positive"),
        ({"sampling": {"max_tokens": -1}}, "sampling.max_tokens must be at least 1"),
        ({"sampling": {"temprature": 1}}, "sampling.unknown sampling parameter(s): temprature"),
        ({"sharding": {"num_shards": 2, "rows_per_shard": 5}}, "sharding.num_shards: give"),
        ({"sharding": {"strategy": "random"}}, "sharding.strategy must be one of"),
        ({"engine": {"kv_cache_dtype": "fp8"}}, "engine.kv_cache_dtype must be auto or int8"),
        ({"engine": {"max_num_seqs": 0}}, "engine.max_num_seqs must be a positive integer"),
        ({"engine": {"overlap_scheduling": "yes"}}, "engine.overlap_scheduling must be true"),
        ({"engine": {"shared_prefix_attention": 1}}, "engine.shared_prefix_attention must be"),
        ({"storage_options": {"secret": "s3cr3t"}}, "storage_options.secret: credentials"),
        ({"input": {"url": "x", "override_columns": {"temp": "t"}}}, "'temp' is not a sampling"),
        ({"model": None}, "model: missing"),
    ],
)
def test_invalid_values_raise_value_errors_naming_the_field(change, message):
    with pytest.raises(ValueError) as info:
        JobConfig.from_dict({**MINIMAL, **change})
    assert message in str(info.value)


def test_openai_jsonl_input_fixes_its_columns():
    config = JobConfig.from_dict({**MINIMAL, "input": {"url": "b.jsonl", "format": "openai-jsonl"}})
    columns = config.input.columns
    assert (columns.id_column, columns.messages_column) == ("custom_id", "messages")
    assert ("max_tokens", "max_tokens") in columns.override_columns
    with pytest.raises(ValueError, match="prompt_column cannot be set for openai-jsonl"):
        JobConfig.from_dict(
            {**MINIMAL, "input": {"url": "b.jsonl", "format": "openai-jsonl", "prompt_column": "p"}}
        )


def test_fingerprint_changes_with_sampling_but_not_with_output_or_batch_knobs():
    base = JobConfig.from_dict(MINIMAL)
    elsewhere = JobConfig.from_dict(
        {**MINIMAL, "output": {"url": "other", "rows_per_part": 7}, "engine": {"max_num_seqs": 8}}
    )
    hotter = JobConfig.from_dict({**MINIMAL, "sampling": {"temperature": 0.7}})
    assert base.fingerprint == elsewhere.fingerprint
    assert base.fingerprint != hotter.fingerprint


def test_yaml_file_loads_and_flags_override_it(tmp_path: Path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "model: smollm2\ninput: {url: data.parquet, carry_columns: [topic]}\n"
        "output: {url: out}\nsampling: {max_tokens: 8}\nsharding: {num_shards: 3}\n"
    )
    assert load_job_config(job).sharding.num_shards == 3
    args = build_parser().parse_args(
        ["run", "--config", str(job), "--max-tokens", "4", "--seed", "3", "--no-dedup"]
        + ["--override", "temperature=temp", "--storage-option", "anon=true"]
    )
    config = job_config_from_args(args)
    assert config.sampling == SamplingParams(max_tokens=4, temperature=0.0, seed=3)
    assert config.input.carry_columns == ("topic",)
    assert config.input.override_columns == {"temperature": "temp"}
    assert config.grouping.dedup is False and config.grouping.prefix_grouping is True
    assert config.storage_options == {"anon": True}


def test_flags_alone_make_a_config():
    args = build_parser().parse_args(
        ["plan", "--input", "in.jsonl", "--input-format", "openai-jsonl", "--output", "o"]
        + ["--model", "/models/x", "--endpoint-url", "http://127.0.0.1:9000"]
    )
    config = job_config_from_args(args)
    assert config.input.format is DataFormat.OPENAI_JSONL
    assert config.model == "/models/x"
    assert config.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}
