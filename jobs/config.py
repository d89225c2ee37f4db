"""Run config for a batchgen job: pipeline's JobConfig dict form, as a Dagster `Config`.

The sections are the ones of a job YAML file (see pipeline.config), so the CLI, a YAML file
and Dagster describe a job the same way; ``job_file`` names such a file and the sections given
here merge over it, section by section (`merge_config_dicts`)::

    ops:
      shard_plan:
        config:
          name: labels-2024-06            # optional: defaults from the output or input URL
          job_file: jobs/my_job.yaml      # optional
          sampling: {max_tokens: 64}
          sharding: {rows_per_shard: 5000}

What the code location decides fills what the job leaves out (`resolve_job`):
- model and engine options come from the `batchgen_model` resource; a job naming another
  model or KV dtype is refused (ValueError naming the field);
- input.url defaults to `batchgen_storage.input_url`, output.url to
  ``<batchgen_storage.output_url>/<name>``; storage options merge under the job's.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from jobs.partitions import check_job_name, job_name_from_url
from jobs.resources import BatchgenModel, BatchgenStorage
from pipeline.config import JobConfig, merge_config_dicts

SECTIONS = ("input", "output", "sampling", "sharding", "grouping", "engine", "storage_options")


class BatchgenJobConfig(dg.Config):
    """One job, in pipeline's dict form (every key optional here; see the module docstring)."""

    name: str | None = None
    job_file: str | None = None
    model: str | None = None
    input: dict[str, Any] = {}
    output: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    sharding: dict[str, Any] = {}
    grouping: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    storage_options: dict[str, Any] = {}

    def job_dict(self) -> dict[str, Any]:
        """The job file's dict (if any) with this config's sections merged over it."""
        base: dict[str, Any] = {}
        if self.job_file:
            loaded = yaml.safe_load(Path(self.job_file).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"job_file {self.job_file}: expected a mapping at the top level")
            base = loaded
        given: dict[str, Any] = {s: getattr(self, s) for s in SECTIONS if getattr(self, s)}
        if self.model is not None:
            given["model"] = self.model
        return merge_config_dicts(base, given)


def resolve_job(
    run: BatchgenJobConfig, model: BatchgenModel, storage: BatchgenStorage
) -> tuple[str, JobConfig]:
    """(job name, JobConfig) for a run config, with the code location's defaults filled in.
    Raises ValueError naming the field for anything JobConfig or the resources refuse."""
    values = run.job_dict()
    values.setdefault("model", model.model)
    # The process's engine options win; only the KV dtype is the job's own (it decides the
    # outputs), kept so that check_job refuses a job asking for another one.
    engine = dict(values.get("engine") or {})
    values["engine"] = merge_config_dicts(
        model.engine, {k: v for k, v in engine.items() if k == "kv_cache_dtype"}
    )
    input_section = dict(values.get("input") or {})
    output_section = dict(values.get("output") or {})
    if not input_section.get("url"):
        if not storage.input_url:
            raise ValueError("input.url: missing (and batchgen_storage.input_url is not set)")
        input_section["url"] = storage.input_url
    if run.name is not None:
        name = check_job_name(run.name)
    else:
        name = job_name_from_url(output_section.get("url") or input_section["url"])
    output_section.setdefault("url", storage.job_output_url(name))
    values["input"], values["output"] = input_section, output_section
    values["storage_options"] = merge_config_dicts(
        storage.storage_options, values.get("storage_options") or {}
    )
    job = JobConfig.from_dict(values)
    model.check_job(job)
    return name, job
