"""Run config -> pipeline JobConfig: job files, sections, defaults from the resources, names,
and the refusals that name the field. No engine is loaded."""

from pathlib import Path

import pytest
import yaml

from jobs.config import BatchgenJobConfig, resolve_job
from jobs.definitions import build_definitions, settings_from_env
from jobs.partitions import job_name_from_url, parse_shard_key, shard_key
from jobs.resources import BatchgenModel, BatchgenStorage
from pipeline.config import JobConfig, load_job_config

REPO = Path(__file__).resolve().parents[2]
SAMPLE_JOB = REPO / "data_samples" / "sample_job.yaml"


@pytest.fixture
def model(smollm2_dir: Path) -> BatchgenModel:
    return BatchgenModel(model=str(smollm2_dir), engine={"max_num_seqs": 8, "num_blocks": 64})


@pytest.fixture
def storage(tmp_path: Path) -> BatchgenStorage:
    return BatchgenStorage(
        input_url=str(tmp_path / "in"),
        output_url=str(tmp_path / "out"),
        storage_options={"auto_mkdir": True},
    )


def test_the_sample_job_file_resolves_to_the_same_job_as_the_cli_reads(
    model: BatchgenModel, storage: BatchgenStorage, smollm2_dir: Path
) -> None:
    run = BatchgenJobConfig(job_file=str(SAMPLE_JOB), model=str(smollm2_dir))
    name, job = resolve_job(run, model, storage)
    cli = load_job_config(SAMPLE_JOB, {"model": str(smollm2_dir)})
    assert name == "sample"  # from the file's output.url ./output/sample
    assert job.input == cli.input and job.output == cli.output
    assert job.sampling == cli.sampling and job.sharding == cli.sharding
    assert job.engine == model.engine_options()  # the code location's engine options
    assert job.storage_options == {"auto_mkdir": True}


def test_sections_merge_over_the_job_file_and_defaults_fill_the_rest(
    model: BatchgenModel, storage: BatchgenStorage, tmp_path: Path, smollm2_dir: Path
) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"sampling": {"max_tokens": 9, "top_k": 5}}))
    run = BatchgenJobConfig(
        name="labels", job_file=str(job_file), sampling={"max_tokens": 3}, grouping={"dedup": False}
    )
    name, job = resolve_job(run, model, storage)
    assert name == "labels"
    assert job.model == str(smollm2_dir)
    assert job.sampling.max_tokens == 3 and job.sampling.top_k == 5
    assert not job.grouping.dedup
    assert job.input.url == str(tmp_path / "in")
    assert job.output.url == str(tmp_path / "out" / "labels")
    assert JobConfig.from_dict(job.to_dict()) == job


def test_the_job_name_defaults_to_the_input_file_name(
    model: BatchgenModel, storage: BatchgenStorage
) -> None:
    run = BatchgenJobConfig(input={"url": "s3://bucket/in/day 1.parquet"})
    name, job = resolve_job(run, model, storage)
    assert name == "day-1" and job.output.url.endswith("/out/day-1")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "/elsewhere/other-model"}, "model: the job asks for '/elsewhere/other-model'"),
        ({"engine": {"kv_cache_dtype": "int8"}}, "engine.kv_cache_dtype: the job asks for 'int8'"),
        ({"sampling": {"max_tokens": 0}}, "sampling.max_tokens"),
        ({"storage_options": {"secret": "x"}}, "storage_options.secret: credentials come from"),
        ({"name": "a/b"}, "name must be"),
        ({"sharding": {"shards": 2}}, "sharding.shards: unknown key"),
    ],
)
def test_invalid_run_config_is_refused_naming_the_field(
    model: BatchgenModel, storage: BatchgenStorage, fields: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resolve_job(BatchgenJobConfig(**fields), model, storage)


def test_a_job_without_input_needs_the_storage_input_url(model: BatchgenModel) -> None:
    with pytest.raises(ValueError, match="input.url: missing"):
        resolve_job(BatchgenJobConfig(), model, BatchgenStorage())


def test_shard_keys_name_the_job_and_the_shard() -> None:
    assert shard_key("day-1", 3) == "day-1/00003"
    assert parse_shard_key("day-1/00003") == ("day-1", 3)
    assert job_name_from_url("file:///data/in/v2.batch.jsonl") == "v2.batch"
    with pytest.raises(ValueError, match="is not <job name>/<shard index>"):
        parse_shard_key("day-1")


def test_the_environment_configures_the_code_location_from_one_job_file(tmp_path: Path) -> None:
    settings = settings_from_env(
        {"BATCHGEN_JOB_FILE": str(SAMPLE_JOB), "BATCHGEN_OUTPUT_URL": str(tmp_path)}
    )
    sample = yaml.safe_load(SAMPLE_JOB.read_text())
    assert settings["model"] == "smollm2" and settings["engine_options"] == sample["engine"]
    assert settings["input_url"] == sample["input"]["url"]
    assert settings["output_url"] == str(tmp_path)
    overridden = settings_from_env(
        {"BATCHGEN_JOB_FILE": str(SAMPLE_JOB), "BATCHGEN_ENGINE_OPTIONS": '{"num_blocks": 8}'}
    )
    assert overridden["engine_options"] == {"num_blocks": 8}
    with pytest.raises(ValueError, match="BATCHGEN_ENGINE_OPTIONS must hold a JSON object"):
        settings_from_env({"BATCHGEN_ENGINE_OPTIONS": "[1]"})


def test_definitions_put_generations_in_the_gpu_pool_with_retries_and_three_checks() -> None:
    defs = build_definitions(model="smollm2", input_url="data_samples")
    defs.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "shard_plan",
        "generations",
        "run_report",
    }
    generations = defs.resolve_assets_def("generations")
    assert generations.op.pool == "gpu"
    assert generations.op.retry_policy is not None and generations.op.retry_policy.max_retries == 2
    assert {c.name for c in generations.check_specs} == {
        "rows_in_equals_rows_out",
        "error_rate_below_threshold",
        "no_unexpected_empty_generations",
    }
    assert {s.name for s in defs.sensors or []} == {
        "batchgen_new_inputs",
        "batchgen_pending_shards",
    }
