"""The Dagster code location: ``dagster dev -m jobs.definitions``.

The deployment is configured by the environment of the process that loads this module; a job
YAML (the one `batchgen run --config` takes) can configure it all at once:

    BATCHGEN_JOB_FILE          a job YAML: its model, engine, input.url and storage_options
                               configure the resources, and the sensor and schedule plan jobs
                               from it (the variables below override it)
    BATCHGEN_MODEL             the model every job runs (default smollm2)
    BATCHGEN_ENGINE_OPTIONS    engine options as JSON, e.g. {"max_num_seqs": 64}
    BATCHGEN_INPUT_URL         default input, and the prefix the new-file sensor watches
    BATCHGEN_OUTPUT_URL        output root: job N writes to <root>/N (default output/dagster)
    BATCHGEN_STORAGE_OPTIONS   fsspec options as JSON (no credentials: those come from the
                               usual AWS_* / GOOGLE_* variables)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from jobs.assets import generations, run_report, shard_plan
from jobs.resources import BatchgenEngine, BatchgenModel, BatchgenStorage
from jobs.triggers import (
    GENERATE_JOB,
    PLAN_JOB,
    build_daily_schedule,
    build_input_sensor,
    pending_shards_sensor,
)

DEFAULT_OUTPUT_URL = "output/dagster"


def build_definitions(
    *,
    model: str = "smollm2",
    engine_options: Mapping[str, Any] | None = None,
    input_url: str | None = None,
    output_url: str = DEFAULT_OUTPUT_URL,
    storage_options: Mapping[str, Any] | None = None,
    job_file: str | None = None,
) -> dg.Definitions:
    """Assets, jobs, sensors, schedule and resources of one deployment."""
    model_resource = BatchgenModel(
        model=model,
        engine=dict(engine_options or {}),
        storage_options=dict(storage_options or {}),
    )
    return dg.Definitions(
        assets=[shard_plan, generations, run_report],
        jobs=[PLAN_JOB, GENERATE_JOB],
        sensors=[build_input_sensor(job_file), pending_shards_sensor],
        schedules=[build_daily_schedule(job_file)],
        resources={
            "batchgen_model": model_resource,
            "batchgen_engine": BatchgenEngine(model=model_resource),
            "batchgen_storage": BatchgenStorage(
                input_url=input_url,
                output_url=output_url,
                storage_options=dict(storage_options or {}),
            ),
        },
    )


def settings_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """build_definitions' arguments from the variables in the module docstring."""
    job: dict[str, Any] = {}
    job_file = env.get("BATCHGEN_JOB_FILE") or None
    if job_file:
        job = yaml.safe_load(Path(job_file).read_text()) or {}
    settings: dict[str, Any] = {
        "model": env.get("BATCHGEN_MODEL") or job.get("model") or "smollm2",
        "engine_options": _json_env(env, "BATCHGEN_ENGINE_OPTIONS", job.get("engine")),
        "input_url": env.get("BATCHGEN_INPUT_URL") or (job.get("input") or {}).get("url"),
        "output_url": env.get("BATCHGEN_OUTPUT_URL") or DEFAULT_OUTPUT_URL,
        "storage_options": _json_env(env, "BATCHGEN_STORAGE_OPTIONS", job.get("storage_options")),
        "job_file": job_file,
    }
    return settings


def _json_env(env: Mapping[str, str], name: str, fallback: Any) -> dict[str, Any]:
    text = env.get(name)
    if not text:
        return dict(fallback or {})
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must hold a JSON object, got {text!r}")
    return value


defs = build_definitions(**settings_from_env(os.environ))
