from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import read_result_table
from pipeline.cli import EXIT_ERROR, EXIT_OK, main

REPO = Path(__file__).parents[2]


def test_plan_of_the_sample_job_needs_no_weights(monkeypatch, capsys):
    def no_weights(*args, **kwargs):
        raise AssertionError("planning must not build the model")

    monkeypatch.setattr("engine.llm.build_model", no_weights)
    monkeypatch.chdir(REPO)
    assert main(["plan", "--config", "data_samples/sample_job.yaml", "--json"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["num_rows"] == 248 and plan["num_shards"] == 2
    assert sum(s["num_errors"] for s in plan["shards"]) == 7
    assert 0.2 <= plan["dedup_ratio"] <= 0.3
    assert plan["predicted_hit_rate"] > 0.3


def test_run_from_flags_prints_a_summary_and_writes_results(tmp_path: Path, capsys):
    pq.write_table(
        pa.table({"prompt": ["Say hi.", "Say hi.", "", "Name a tree."]}), tmp_path / "in.parquet"
    )
    argv = [
        "run",
        "--input",
        str(tmp_path / "in.parquet"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        "smollm2",
        "--max-tokens",
        "2",
        "--num-shards",
        "2",
        "--num-blocks",
        "64",
        "--max-num-seqs",
        "8",
        "--no-progress",
        "--report-json",
        str(tmp_path / "report.json"),
    ]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "total: 4 rows, 1 errors" in out
    assert json.loads((tmp_path / "report.json").read_text())["num_rows"] == 4
    table = read_result_table(str(tmp_path / "out"))
    assert sorted(e or "" for e in table["error"].to_pylist()) == [
        "",
        "",
        "",
        "row 2: prompt: empty",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--input", "/nonexistent/in.parquet", "--output", "/tmp/x", "--model", "m"],
            "no such file",
        ),
        (["--output", "/tmp/x", "--model", "m"], "input: missing"),
        (
            ["--input", "i", "--output", "o", "--model", "m", "--override", "max_tokens"],
            "KEY=VALUE",
        ),
    ],
)
def test_bad_jobs_exit_with_a_message(argv, message, capsys):
    assert main(["run", *argv]) == EXIT_ERROR
    assert message in capsys.readouterr().err
