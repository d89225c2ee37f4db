"""Speculative decoding configured through the job config, with its metrics in shard reports."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.model_loading import load_job_llm
from pipeline.results import read_result_table
from pipeline.runner import run_job

PASSAGE = "the cat sat on the mat and the dog sat on the log and the cat saw the dog"


def test_a_job_with_ngram_speculation_reports_acceptance_and_matches_plain_greedy(
    job_config, tmp_path: Path
):
    rows = [
        {"id": f"r{i}", "prompt": f"Repeat exactly: {PASSAGE} {i}\n{PASSAGE} {i}\n"}
        for i in range(3)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    texts = {}
    for name, engine in (("plain", {}), ("spec", {"speculative": {"method": "ngram", "k": 4}})):
        config = job_config(
            str(tmp_path / "in.parquet"),
            str(tmp_path / name),
            input={"id_column": "id"},
            sampling={"max_tokens": 24},
            engine=engine,
        )
        report = run_job(config, llm=load_job_llm(config))
        texts[name] = {
            r["id"]: r["text"] for r in read_result_table(str(tmp_path / name)).to_pylist()
        }
        shard = report.shards[0]
        if name == "spec":
            assert shard.num_draft_tokens > 0 and shard.num_accepted_tokens > 0
            assert shard.mean_acceptance_length > 1.0
            assert shard.to_dict()["mean_acceptance_length"] == pytest.approx(
                shard.mean_acceptance_length, abs=1e-6
            )
        assert shard.peak_kv_blocks > 0
    assert texts["spec"] == texts["plain"]


def test_an_invalid_speculative_section_names_the_field():
    with pytest.raises(ValueError, match=r"engine\.speculative: .*ngram or draft"):
        JobConfig.from_dict(
            {
                "model": "smollm2",
                "input": {"url": "x.parquet"},
                "output": {"url": "out"},
                "engine": {"speculative": {"method": "medusa"}},
            }
        )
