"""Fixtures for the Dagster tests: a six-row dataset cut into three shards, resources over a
temp dir with a small SmolLM2 engine, and a counter of engine loads. On CPU every engine
step costs ~0.1 s, so rows are few and max_tokens is 4."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs.resources
from engine import LLM
from jobs.config import BatchgenJobConfig
from jobs.resources import BatchgenEngine, BatchgenModel, BatchgenStorage, clear_engine_cache

ENGINE_OPTIONS = {"num_blocks": 64, "max_num_seqs": 8, "max_num_batched_tokens": 256}

# Three shards of two rows (range sharding): shard 0 is one request served twice (dedup),
# shard 1 two plain prompts, shard 2 one prompt and one invalid row (empty prompt).
PROMPTS = ["Say hi.", "Say hi.", "Name a colour.", "Count to three.", "Name a fruit.", ""]
NUM_SHARDS = 3
JOB_SECTIONS: dict[str, Any] = {
    "sampling": {"max_tokens": 4, "temperature": 0.0},
    "sharding": {"num_shards": NUM_SHARDS},
}


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"row-{i}" for i in range(len(prompts))]
    pq.write_table(pa.table({"id": ids, "prompt": prompts}), path)
    return path


def job_run_config(**fields: Any) -> BatchgenJobConfig:
    """The test job's run config: ids from the id column, greedy, 4 tokens, three shards."""
    values: dict[str, Any] = {"input": {"id_column": "id"}, **JOB_SECTIONS}
    values.update(fields)
    return BatchgenJobConfig(**values)


def make_resources(
    model_dir: Path, input_url: str | None, output_url: str, **model_fields: Any
) -> dict[str, Any]:
    model = BatchgenModel(model=str(model_dir), engine=dict(ENGINE_OPTIONS), **model_fields)
    return {
        "batchgen_model": model,
        "batchgen_engine": BatchgenEngine(model=model),
        "batchgen_storage": BatchgenStorage(input_url=input_url, output_url=output_url),
    }


class EngineLoads:
    """Counts engine.LLM constructions made through jobs.resources."""

    def __init__(self) -> None:
        self.count = 0

    def llm_class(self) -> type[LLM]:
        loads = self

        class CountingLLM(LLM):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                loads.count += 1
                super().__init__(*args, **kwargs)

        return CountingLLM


@pytest.fixture(scope="module")
def engine_loads() -> Iterator[EngineLoads]:
    """Engine loads of this test module, starting from an empty process cache."""
    loads = EngineLoads()
    clear_engine_cache()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs.resources, "LLM", loads.llm_class())
        yield loads
    clear_engine_cache()
