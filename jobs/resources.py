"""Dagster resources: which model this code location serves, the loaded engine, and storage.

- `BatchgenModel` names the model and its engine options. It loads nothing, so the plan
  (which needs only the tokenizer) can use it without touching the GPU.
- `BatchgenEngine` loads that model once per process, in `setup_for_execution`, and hands the
  same `engine.LLM` to every shard materialized in the process: a run that materializes many
  partitions, or many runs executed in one process, load the weights once.
- `BatchgenStorage` says where jobs read and write by default: the input URL (also the prefix
  the sensor watches), the output root (a job named N writes to ``<output root>/N``) and
  non-secret fsspec options such as ``endpoint_url``. Credentials never appear in config: the
  storage SDKs read them from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
  GOOGLE_APPLICATION_CREDENTIALS) of the process that runs the step.
"""

import functools
import json
import logging
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from engine import LLM
from pipeline.config import DataFormat, EngineOptions, JobConfig, canonical_json
from pipeline.model_loading import resolve_model
from pipeline.storage import InputFile, Store, list_dataset

logger = logging.getLogger(__name__)

INPUT_SUFFIXES = DataFormat.PARQUET.suffixes + DataFormat.OPENAI_JSONL.suffixes


class BatchgenModel(dg.ConfigurableResource):
    """The model every job of this code location runs, and the engine options it runs with.

    model: a registry name (``smollm2``) or a model folder/URL. engine: pipeline's engine
    section (kv_cache_dtype, max_num_seqs, num_blocks, ...). storage_options: fsspec options
    for a model on object storage."""

    model: str = "smollm2"
    engine: dict[str, Any] = {}
    storage_options: dict[str, Any] = {}

    def engine_options(self) -> EngineOptions:
        try:
            return EngineOptions(**self.engine)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"batchgen_model.engine: {exc}") from None

    def same_model(self, model: str) -> bool:
        """Whether model names this resource's model (a registry name and its folder match)."""
        return model == self.model or resolve_model(model) == resolve_model(self.model)

    def check_job(self, job: JobConfig) -> None:
        """ValueError when the job asks for another model or KV dtype than this one serves;
        the other engine options are the process's and not part of the job's identity."""
        if not self.same_model(job.model):
            raise ValueError(
                f"model: the job asks for {job.model!r} but this code location serves "
                f"{self.model!r} (resource batchgen_model)"
            )
        serves = self.engine_options().kv_cache_dtype
        if job.engine.kv_cache_dtype != serves:
            raise ValueError(
                f"engine.kv_cache_dtype: the job asks for {job.engine.kv_cache_dtype!r} but "
                f"this code location serves {serves!r} (resource batchgen_model)"
            )


@functools.lru_cache(maxsize=1)
def _load_llm(model: str, options: EngineOptions, storage_options_json: str) -> LLM:
    """The process's engine. maxsize=1: a different model replaces (and frees) the old one."""
    storage_options = json.loads(storage_options_json) or None
    logger.info("loading %s for this process", model)
    return LLM(resolve_model(model), storage_options=storage_options, **options.llm_kwargs())


def clear_engine_cache() -> None:
    """Drop the process's engine (tests, or to free the device between unrelated runs)."""
    _load_llm.cache_clear()


class BatchgenEngine(dg.ConfigurableResource):
    """The loaded engine of `model`, shared by every step of this process that uses it."""

    model: BatchgenModel
    _llm: LLM | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._llm = _load_llm(
            self.model.model,
            self.model.engine_options(),
            canonical_json(self.model.storage_options),
        )

    def llm_for(self, job: JobConfig) -> LLM:
        """The engine, after checking that it is the one the job needs."""
        self.model.check_job(job)
        assert self._llm is not None, "setup_for_execution runs before any step uses the engine"
        return self._llm


class BatchgenStorage(dg.ConfigurableResource):
    """Default input and output locations and fsspec options (no secrets; see the module
    docstring). output_url is a root: job N writes to ``<output_url>/N``."""

    input_url: str | None = None
    output_url: str = "output/dagster"
    storage_options: dict[str, Any] = {}

    def job_output_url(self, job_name: str) -> str:
        return f"{self.output_url.rstrip('/')}/{job_name}"

    def list_inputs(self) -> list[InputFile]:
        """Every Parquet/JSONL file under input_url, by name; files under the output root are
        left out (so outputs written beside the inputs are never taken for new input).
        FileNotFoundError when input_url is unset or holds none."""
        if not self.input_url:
            raise FileNotFoundError("batchgen_storage.input_url is not set")
        files = list_dataset(self.input_url, INPUT_SUFFIXES, self.storage_options)
        output_root = Store(self.output_url, self.storage_options).full_url("")
        return [f for f in files if not f.url.startswith(output_root + "/")]
