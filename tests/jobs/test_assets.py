"""The assets end to end in process: plan a six-row job into three shards, materialize every
shard partition with one set of resources, then check metadata, checks and the report."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from jobs.assets import generations, recorded_job, run_report, shard_plan
from jobs.checks import (
    ERROR_RATE,
    NO_EMPTY,
    ROWS_MATCH,
    check_rows_in_equal_rows_out,
    read_shard_outcome,
)
from jobs.config import BatchgenJobConfig
from jobs.partitions import SHARDS_NAME
from pipeline import read_result_table
from pipeline.plan import read_plan
from pipeline.storage import Store
from tests.jobs.conftest import (
    NUM_SHARDS,
    PROMPTS,
    EngineLoads,
    job_run_config,
    make_resources,
    write_prompts,
)

JOB = "prompts"
KEYS = [f"{JOB}/{i:05d}" for i in range(NUM_SHARDS)]


@dataclass
class Materialized:
    instance: dg.DagsterInstance
    resources: dict
    output: Path
    plan: dg.ExecuteInProcessResult
    shards: dict[str, dg.ExecuteInProcessResult]
    loads_after_backfill: int


def plan_config(config: BatchgenJobConfig) -> dg.RunConfig:
    return dg.RunConfig(ops={"shard_plan": config})


def metadata_values(result: dg.ExecuteInProcessResult, node: str) -> dict:
    [materialization] = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in materialization.metadata.items()}


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def materialized(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, engine_loads: EngineLoads
) -> Materialized:
    root = tmp_path_factory.mktemp("assets")
    data = write_prompts(root / "in" / "prompts.parquet", PROMPTS)
    resources = make_resources(smollm2_dir, str(data), str(root / "out"))
    instance = dg.DagsterInstance.ephemeral()
    plan = dg.materialize(
        [shard_plan],
        instance=instance,
        resources=resources,
        run_config=plan_config(job_run_config()),
    )
    shards = {
        key: dg.materialize(
            [generations], partition_key=key, instance=instance, resources=resources
        )
        for key in instance.get_dynamic_partitions(SHARDS_NAME)
    }
    return Materialized(instance, resources, root / "out" / JOB, plan, shards, engine_loads.count)


def test_shard_plan_registers_one_partition_per_shard_and_records_the_job(
    materialized: Materialized,
) -> None:
    assert materialized.instance.get_dynamic_partitions(SHARDS_NAME) == KEYS
    values = metadata_values(materialized.plan, "shard_plan")
    assert values["job_name"] == JOB
    assert values["shards"] == NUM_SHARDS and values["rows"] == len(PROMPTS)
    assert values["invalid_rows"] == 1  # the empty prompt
    assert values["requests"] == 4  # six rows, one duplicate, one invalid
    stored = read_plan(Store(str(materialized.output)))
    assert stored is not None and stored.job_fingerprint == values["job_fingerprint"]
    job = recorded_job(materialized.instance, JOB)
    assert job.output.url == str(materialized.output) and job.sampling.max_tokens == 4


def test_backfilling_every_shard_loads_the_model_once(materialized: Materialized) -> None:
    assert all(r.success for r in materialized.shards.values())
    assert materialized.loads_after_backfill == 1
    table = read_result_table(str(materialized.output))
    assert sorted(table.column("id").to_pylist()) == [f"row-{i}" for i in range(len(PROMPTS))]


def test_shard_metadata_reports_rows_tokens_speed_cache_and_dedup(
    materialized: Materialized,
) -> None:
    first = metadata_values(materialized.shards[KEYS[0]], "generations")
    assert first["status"] == "generated"
    assert first["rows"] == 2 and first["rows_written"] == 2 and first["errors"] == 0
    assert first["requests"] == 1 and first["dedup_ratio"] == pytest.approx(0.5)
    assert first["tokens_in"] > 0 and 0 < first["tokens_out"] <= 4
    assert first["tokens_per_second"] > 0 and first["duration_s"] > 0
    assert 0.0 <= first["prefix_cache_hit_rate"] <= 1.0
    assert first["preemptions"] == 0 and first["parts"] == 1
    last = metadata_values(materialized.shards[KEYS[2]], "generations")
    assert last["errors"] == 1 and last["error_rate"] == pytest.approx(0.5)
    materialization = materialized.shards[KEYS[0]].asset_materializations_for_node("generations")
    assert isinstance(materialization[0].metadata["tokens_out"], dg.IntMetadataValue)
    assert isinstance(materialization[0].metadata["tokens_per_second"], dg.FloatMetadataValue)


def test_shard_checks_pass_on_clean_shards_and_flag_the_error_rate_of_the_bad_one(
    materialized: Materialized,
) -> None:
    for key in KEYS[:2]:
        assert check_outcomes(materialized.shards[key]) == {
            ROWS_MATCH: True,
            ERROR_RATE: True,
            NO_EMPTY: True,
        }
    assert check_outcomes(materialized.shards[KEYS[2]]) == {
        ROWS_MATCH: True,
        ERROR_RATE: False,  # one of two rows failed: over the default 5%
        NO_EMPTY: True,
    }


def test_error_rate_threshold_comes_from_run_config(materialized: Materialized) -> None:
    result = dg.materialize(
        [generations],
        partition_key=KEYS[2],
        instance=materialized.instance,
        resources=materialized.resources,
        run_config=dg.RunConfig(ops={"generations": {"config": {"max_error_rate": 0.5}}}),
    )
    assert check_outcomes(result)[ERROR_RATE] is True


def test_rematerializing_a_complete_shard_skips_it_and_reports_its_manifest(
    materialized: Materialized, engine_loads: EngineLoads
) -> None:
    before = {p.name for p in (materialized.output / "shards/00001/parts").iterdir()}
    result = dg.materialize(
        [generations],
        partition_key=KEYS[1],
        instance=materialized.instance,
        resources=materialized.resources,
    )
    values = metadata_values(result, "generations")
    assert values["status"] == "skipped"
    assert values["rows"] == 2 and values["tokens_out"] > 0  # the completing run's numbers
    assert {p.name for p in (materialized.output / "shards/00001/parts").iterdir()} == before
    assert engine_loads.count == 1


def test_rows_check_fails_when_the_manifest_lists_fewer_rows_than_planned(
    materialized: Materialized, tmp_path: Path
) -> None:
    copy = tmp_path / "out"
    shutil.copytree(materialized.output, copy)
    store = Store(str(copy))
    plan = read_plan(store)
    assert plan is not None
    shard = plan.shards[1]
    assert check_rows_in_equal_rows_out(
        read_shard_outcome(store, shard, plan.job_fingerprint)
    ).passed

    manifest_path = copy / "shards/00001/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["num_rows"] = 1
    manifest_path.write_text(json.dumps(manifest))
    result = check_rows_in_equal_rows_out(read_shard_outcome(store, shard, plan.job_fingerprint))
    assert not result.passed
    assert result.metadata["rows_in"].value == 2 and result.metadata["rows_out"].value == 1

    manifest_path.unlink()
    result = check_rows_in_equal_rows_out(read_shard_outcome(store, shard, plan.job_fingerprint))
    assert not result.passed and "not complete" in (result.description or "")


def test_run_report_sums_the_committed_manifests_of_the_latest_job(
    materialized: Materialized,
) -> None:
    result = dg.materialize(
        [run_report], instance=materialized.instance, resources=materialized.resources
    )
    values = metadata_values(result, "run_report")
    assert values["job_name"] == JOB
    assert values["shards"] == values["shards_complete"] == NUM_SHARDS
    assert values["missing_shards"] == "none"
    assert values["rows_planned"] == values["rows_committed"] == len(PROMPTS)
    assert values["errors"] == 1
    assert values["tokens_out"] > 0 and values["tokens_per_second"] > 0
    assert values["shards_table"].count("\n") == NUM_SHARDS + 1


def test_generations_fails_without_retrying_for_a_job_that_was_never_planned(
    materialized: Materialized,
) -> None:
    materialized.instance.add_dynamic_partitions(SHARDS_NAME, ["unplanned/00000"])
    try:
        result = dg.materialize(
            [generations],
            partition_key="unplanned/00000",
            instance=materialized.instance,
            resources=materialized.resources,
            raise_on_error=False,
        )
    finally:
        materialized.instance.delete_dynamic_partition(SHARDS_NAME, "unplanned/00000")
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert "no plan is recorded for job 'unplanned'" in str(failures[0].step_failure_data.error)
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def test_replanning_with_fewer_shards_drops_the_stale_partitions(
    materialized: Materialized, tmp_path: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    config = job_run_config(name="again", output={"url": str(tmp_path / "again")})
    dg.materialize(
        [shard_plan],
        instance=instance,
        resources=materialized.resources,
        run_config=plan_config(config),
    )
    fewer = job_run_config(
        name="again",
        output={"url": str(tmp_path / "again"), "overwrite": True},
        sharding={"num_shards": 2},
    )
    dg.materialize(
        [shard_plan],
        instance=instance,
        resources=materialized.resources,
        run_config=plan_config(fewer),
    )
    assert instance.get_dynamic_partitions(SHARDS_NAME) == ["again/00000", "again/00001"]
