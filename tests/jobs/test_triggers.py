"""The sensors and the schedule, evaluated with Dagster's test contexts (no daemon, no runs)."""

import datetime
import json
from pathlib import Path

import dagster as dg

from jobs.partitions import SHARDS_NAME
from jobs.resources import BatchgenStorage
from jobs.triggers import build_daily_schedule, build_input_sensor, pending_shards_sensor
from tests.jobs.conftest import write_prompts


def plan_config(request: dg.RunRequest) -> dict:
    return request.run_config["ops"]["shard_plan"]["config"]


def test_new_input_sensor_requests_one_plan_run_per_new_file_and_remembers_them(
    tmp_path: Path,
) -> None:
    incoming, out = tmp_path / "incoming", tmp_path / "incoming" / "_out"
    write_prompts(incoming / "a.parquet", ["Say hi."])
    write_prompts(incoming / "sub" / "a.parquet", ["Say hi."])
    (incoming / "b.jsonl").write_text('{"custom_id": "1", "body": {"prompt": "hi"}}\n')
    (incoming / "notes.txt").write_text("not a dataset")
    write_prompts(out / "a" / "shards" / "00000" / "parts" / "p.parquet", ["output"])
    storage = BatchgenStorage(input_url=str(incoming), output_url=str(out))
    sensor = build_input_sensor(job_file="jobs/template.yaml")

    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources={"batchgen_storage": storage}
        )
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        configs = {plan_config(r)["name"]: plan_config(r) for r in result.run_requests or []}
        assert set(configs) == {"a", "b", "sub-a"}  # outputs under the prefix are not inputs
        assert configs["b"]["input"]["format"] == "openai-jsonl"
        assert configs["sub-a"]["input"]["url"].endswith("incoming/sub/a.parquet")
        assert configs["sub-a"]["output"]["url"] == str(out / "sub-a")
        assert configs["a"]["job_file"] == "jobs/template.yaml"
        assert result.cursor is not None
        assert {r.run_key for r in result.run_requests or []} == set(json.loads(result.cursor))

        again = sensor(
            dg.build_sensor_context(
                instance=instance, cursor=result.cursor, resources={"batchgen_storage": storage}
            )
        )
        assert isinstance(again, dg.SkipReason)

        write_prompts(incoming / "c.parquet", ["Name a fruit."])
        later = sensor(
            dg.build_sensor_context(
                instance=instance, cursor=result.cursor, resources={"batchgen_storage": storage}
            )
        )
        assert isinstance(later, dg.SensorResult) and later.cursor is not None
        assert [plan_config(r)["name"] for r in later.run_requests or []] == ["c"]
        assert len(json.loads(later.cursor)) == 4


def test_new_input_sensor_skips_while_the_prefix_is_empty(tmp_path: Path) -> None:
    storage = BatchgenStorage(input_url=str(tmp_path / "nothing"), output_url=str(tmp_path / "o"))
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources={"batchgen_storage": storage}
        )
        result = build_input_sensor(job_file=None)(context)
    assert isinstance(result, dg.SkipReason) and "no such file" in (result.skip_message or "")


def test_pending_shards_sensor_requests_each_unmaterialized_shard_once() -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_NAME, ["j/00000", "j/00001", "j/00002"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="generations", partition="j/00001")
        )
        result = pending_shards_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SensorResult)
    requests = result.run_requests or []
    assert [r.partition_key for r in requests] == ["j/00000", "j/00002"]
    assert [r.run_key for r in requests] == ["j/00000", "j/00002"]


def test_daily_schedule_plans_the_job_file_into_a_dated_output(tmp_path: Path) -> None:
    storage = BatchgenStorage(input_url="data_samples", output_url=str(tmp_path))
    schedule = build_daily_schedule(job_file="data_samples/sample_job.yaml")
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime.datetime(2025, 3, 4, 2, 0),
        resources={"batchgen_storage": storage},
    )
    request = schedule(context)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == "daily-2025-03-04"
    config = plan_config(request)
    assert config["job_file"] == "data_samples/sample_job.yaml"
    assert config["output"]["url"] == str(tmp_path / "daily-2025-03-04")
