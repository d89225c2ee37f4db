"""Dedup + prefix grouping measured on the engine: the same job with and without them, each on a
fresh engine (an empty prefix cache), compared by the tokens the model actually computed.

The KV cache is kept to 32 blocks (about five sequences), so as in production the dataset is far
larger than what the cache holds: a shared system prompt or a duplicate's prompt is found in the
cache only if it runs soon after its twin. In input order the four system prompts interleave and
keep evicting each other and duplicates run again; sorted and deduplicated they do not."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine import LLM
from pipeline import read_result_table, run_job

SMALL_CACHE = {"num_blocks": 32, "max_num_seqs": 256, "max_num_batched_tokens": 8192}
SAMPLES = Path(__file__).parents[2] / "data_samples" / "make_samples.py"


def _samples():
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dataset(path: Path) -> int:
    """4 shared system prompts x 10 user messages, plus 30% exact duplicates, shuffled."""
    s = _samples()
    users = {
        s.SYSTEM_QA: s.QUESTIONS[:10],
        s.SYSTEM_EDITOR: [f"Make this more concise:\n\n{t}" for t in s.REWRITE_TEXTS[:10]],
        s.SYSTEM_SUMMARY: s.PASSAGES[:10],
        s.SYSTEM_SUPPORT: s.TICKETS[:10],
    }
    unique = [
        [{"role": "system", "content": system}, {"role": "user", "content": user}]
        for system, messages in users.items()
        for user in messages
    ]
    rng = random.Random(3)
    chats = unique + rng.sample(unique, k=17)  # 17 of 57 rows (30%) repeat another row
    rng.shuffle(chats)
    table = pa.table({"id": [f"m{i}" for i in range(len(chats))], "messages": chats})
    pq.write_table(table, path)
    return len(chats)


def test_dedup_and_prefix_grouping_cut_computed_tokens_by_at_least_a_quarter(
    smollm2_dir, job_config, tmp_path: Path
):
    num_rows = _dataset(tmp_path / "in.parquet")
    computed = {}
    for name, grouping in (
        ("plain", {"dedup": False, "prefix_grouping": False}),
        ("grouped", {"dedup": True, "prefix_grouping": True}),
    ):
        config = job_config(
            str(tmp_path / "in.parquet"),
            str(tmp_path / name),
            input={"id_column": "id", "messages_column": "messages"},
            grouping=grouping,
            engine=SMALL_CACHE,
            sampling={"max_tokens": 4, "ignore_eos": True},
        )
        llm = LLM(smollm2_dir, **SMALL_CACHE)
        report = run_job(config, llm=llm)
        computed[name] = llm.metrics.num_computed_tokens
        assert read_result_table(str(tmp_path / name)).num_rows == num_rows
        assert report.num_errors == 0
        del llm
    saved = 1 - computed["grouped"] / computed["plain"]
    assert saved >= 0.25, computed
