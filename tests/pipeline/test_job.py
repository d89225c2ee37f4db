"""The real job end to end on SmolLM2 (CPU): validation at scale, dedup fan-out, resume,
crash recovery, overwrite, output formats, fail-fast errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import iter_result_records, plan_job, read_result_table, run_job
from pipeline.commit import ShardOutput

GOOD_PROMPTS = ["Say hi.", "Name a colour.", "Count to three.", "Name a fruit.", "Say yes."]
SYSTEM = "You are a terse assistant. Reply with a single word and nothing else, please."

# (body of an OpenAI batch line or a raw line, the field its error must name)
JSONL_BAD_KINDS: list[tuple[object, str]] = [
    ("{oops", "line"),
    ("[1, 2]", "line"),
    ({"custom_id": "C"}, "body: missing"),
    ({"custom_id": "C", "body": "text"}, "body: expected an object"),
    ({"body": {"prompt": "hi"}}, "custom_id: missing"),
    ({"custom_id": "C", "body": {}}, "prompt: missing"),
    ({"custom_id": "C", "body": {"prompt": ""}}, "prompt: empty"),
    ({"custom_id": "C", "body": {"prompt": 7}}, "prompt: expected a string"),
    ({"custom_id": "C", "body": {"messages": {"role": "user"}}}, "messages: expected a list"),
    ({"custom_id": "C", "body": {"messages": []}}, "messages: empty list"),
    ({"custom_id": "C", "body": {"messages": [{"content": "hi"}]}}, "messages[0].role: missing"),
    (
        {
            "custom_id": "C",
            "body": {
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": 3}]
            },
        },
        "messages[1].content: expected a string",
    ),
    ({"custom_id": "C", "body": {"messages": ["hi"]}}, "messages[0]: expected an object"),
    (
        {"custom_id": "C", "body": {"prompt": "hi", "max_tokens": -1}},
        "max_tokens: max_tokens must be at least 1",
    ),
    (
        {"custom_id": "C", "body": {"prompt": "hi", "temperature": "hot"}},
        "temperature: temperature must be a number",
    ),
    ({"custom_id": "C", "body": {"prompt": "hi", "top_p": 2}}, "top_p: top_p must be in (0, 1]"),
    ({"custom_id": "C", "body": {"prompt": "hi", "seed": "x"}}, "seed: seed must be an integer"),
    (
        {"custom_id": "C", "body": {"prompt": "hi", "stop": [""]}},
        "stop: stop must hold non-empty strings",
    ),
    ({"custom_id": "DUP", "body": {"prompt": "hi"}}, "custom_id: duplicate id"),
]
TOO_LONG = {"custom_id": "C", "body": {"prompt": "word " * 9000}}  # fails in the engine


def _good_line(i: int) -> dict:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": GOOD_PROMPTS[i % 5]},
    ]
    return {
        "custom_id": f"good-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": messages},
    }


def _write_bad_jsonl(path: Path, num_bad: int) -> list[tuple[int, str | None, str | None]]:
    """Bad lines of every kind (with unique custom_ids) mixed with 20 good ones; returns per
    row (row index, custom_id or None, expected error field or None)."""
    rng = random.Random(0)
    entries: list[tuple[str, str | None, str | None]] = []
    entries.append((json.dumps({"custom_id": "DUP", "body": {"prompt": "first"}}), "DUP", None))
    for i in range(num_bad):
        body, field = JSONL_BAD_KINDS[i % len(JSONL_BAD_KINDS)]
        if i % 250 == 0:
            body, field = TOO_LONG, "prompt:"
        if isinstance(body, str):
            entries.append((body, None, field))
            continue
        line = dict(body)
        if line.get("custom_id") == "C":
            line["custom_id"] = f"bad-{i}"
        entries.append(
            (json.dumps(line), line.get("custom_id") if "DUP" not in str(line) else None, field)
        )
    entries += [(json.dumps(_good_line(i)), f"good-{i}", None) for i in range(20)]
    first = entries[0]
    rest = entries[1:]
    rng.shuffle(rest)
    entries = [first, *rest]
    path.write_text("\n".join(line for line, _, _ in entries) + "\n")
    return [(index, cid, field) for index, (_, cid, field) in enumerate(entries)]


def test_every_row_of_a_jsonl_with_1000_bad_rows_comes_back_once_with_errors_naming_fields(
    llm, job_config, tmp_path: Path
):
    expected = _write_bad_jsonl(tmp_path / "in.jsonl", num_bad=1100)
    config = job_config(
        str(tmp_path / "in.jsonl"),
        str(tmp_path / "out"),
        input={"format": "openai-jsonl"},
        sharding={"num_shards": 3, "strategy": "content"},
        output={"rows_per_part": 300},
    )
    report = run_job(config, llm=llm)
    table = read_result_table(str(tmp_path / "out"))
    rows = {r["row_index"]: r for r in table.to_pylist()}
    assert table.num_rows == len(expected) == len(rows) == len(set(table["id"].to_pylist()))
    num_bad = 0
    for index, custom_id, field in expected:
        row = rows[index]
        if custom_id is not None:
            assert row["id"] == custom_id
        if field is None:
            assert row["error"] is None and row["text"] is not None, row
        else:
            num_bad += 1
            assert row["error"].startswith(f"row {index}: "), row["error"]
            assert field in row["error"], (field, row["error"])
            assert row["finish_reason"] == "error" and row["text"] is None
    assert num_bad >= 1000
    assert report.num_errors == num_bad


def test_every_row_of_a_parquet_with_1000_bad_rows_comes_back_once_with_errors_naming_fields(
    llm, job_config, tmp_path: Path
):
    kinds: list[tuple[dict, str | None]] = [
        ({"prompt": None, "chat": None}, "prompt: missing"),
        ({"prompt": ""}, "prompt: empty"),
        ({"prompt": "  "}, "prompt: empty"),
        ({"chat": "[{"}, "chat: invalid JSON"),
        ({"chat": json.dumps({"role": "user"})}, "chat: expected a list"),
        ({"chat": "[]"}, "chat: empty list"),
        ({"chat": json.dumps([{"role": "user"}])}, "chat[0].content: missing"),
        ({"chat": json.dumps([{"role": 1, "content": "x"}])}, "chat[0].role: expected a string"),
        ({"prompt": "hi", "max_new": -5}, "max_new: max_tokens must be at least 1"),
        ({"prompt": "hi", "temp": -0.5}, "temp: temperature must be >= 0"),
    ]
    rows: list[dict] = []
    fields: list[str | None] = []
    for i in range(1000):
        values, field = kinds[i % len(kinds)]
        rows.append({"prompt": None, "chat": None, "max_new": None, "temp": None, **values, "n": i})
        fields.append(field)
        if i % 40 == 0:  # interleave good rows, half of them duplicates
            rows.append(
                {"prompt": GOOD_PROMPTS[i % 3], "chat": None, "max_new": None, "temp": None, "n": i}
            )
            fields.append(None)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=128)
    config = job_config(
        str(tmp_path / "in.parquet"),
        str(tmp_path / "out"),
        input={
            "prompt_column": "prompt",
            "messages_column": "chat",
            "carry_columns": ["n"],
            "override_columns": {"max_tokens": "max_new", "temperature": "temp"},
        },
        sharding={"num_shards": 4},
    )
    run_job(config, llm=llm)
    table = read_result_table(str(tmp_path / "out")).sort_by("row_index")
    assert table["row_index"].to_pylist() == list(range(len(rows)))
    assert table["n"].to_pylist() == [r["n"] for r in rows]
    for index, (error, field) in enumerate(zip(table["error"].to_pylist(), fields, strict=True)):
        if field is None:
            assert error is None
        else:
            assert error.startswith(f"row {index}: {field}"), (index, error, field)


def _chat_dataset(path: Path, num_unique: int = 8, num_duplicates: int = 4) -> list[dict]:
    rows = [
        {
            "id": f"q{i}",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Number {i}?"},
            ],
            "topic": f"t{i}",
        }
        for i in range(num_unique)
    ]
    rows += [{**rows[i], "id": f"dup{i}", "topic": f"d{i}"} for i in range(num_duplicates)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def _chat_config(job_config, tmp_path: Path, **sections):
    return job_config(
        str(tmp_path / "chat.parquet"),
        str(tmp_path / "out"),
        **{
            "input": {"id_column": "id", "messages_column": "messages", "carry_columns": ["topic"]},
            "output": {"rows_per_part": 3},
            "sharding": {"num_shards": 2, "strategy": "content"},
            **sections,
        },
    )


def test_duplicates_are_generated_once_and_fanned_out_to_every_id(llm, job_config, tmp_path: Path):
    _chat_dataset(tmp_path / "chat.parquet")
    before = replace(llm.metrics)
    report = run_job(_chat_config(job_config, tmp_path), llm=llm)
    assert llm.metrics.num_requests - before.num_requests == 8
    assert sum(s.num_requests for s in report.shards) == 8
    by_id = {r["id"]: r for r in read_result_table(str(tmp_path / "out")).to_pylist()}
    assert len(by_id) == 12
    for i in range(4):
        original, copy = by_id[f"q{i}"], by_id[f"dup{i}"]
        assert copy["text"] == original["text"] and copy["text"]
        assert {original["is_duplicate"], copy["is_duplicate"]} == {False, True}
        assert copy["topic"] == f"d{i}"  # carried columns stay per row
        assert copy["params_fingerprint"] == original["params_fingerprint"]


def test_second_run_resumes_and_generates_nothing(llm, job_config, tmp_path: Path):
    _chat_dataset(tmp_path / "chat.parquet")
    config = _chat_config(job_config, tmp_path)
    run_job(config, llm=llm)
    first = sorted(read_result_table(str(tmp_path / "out")).to_pylist(), key=lambda r: r["id"])
    before = replace(llm.metrics)
    report = run_job(config, llm=llm)
    assert llm.metrics.num_requests == before.num_requests
    assert llm.metrics.num_computed_tokens == before.num_computed_tokens
    assert [s.status for s in report.shards] == ["skipped", "skipped"]
    again = sorted(read_result_table(str(tmp_path / "out")).to_pylist(), key=lambda r: r["id"])
    assert again == first


def test_a_crash_between_part_and_commit_loses_and_duplicates_nothing(
    llm, job_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    _chat_dataset(tmp_path / "chat.parquet", num_unique=10, num_duplicates=0)
    config = _chat_config(job_config, tmp_path, sharding={"num_shards": 1, "strategy": "range"})
    real_put = ShardOutput.commit_part
    calls = []

    def crash_on_second_part(self, part, data, ids):
        calls.append(part)
        if len(calls) == 2:  # the part lands, then the process dies before its commit record
            self.store.write_new(f"{self.dir}/parts/{part}", data)
            raise SimulatedKill
        if len(calls) > 2:  # a dead process writes nothing more (parts queued on the writer)
            raise SimulatedKill
        return real_put(self, part, data, ids)

    monkeypatch.setattr(ShardOutput, "commit_part", crash_on_second_part)
    with pytest.raises(SimulatedKill):
        run_job(config, llm=llm)
    monkeypatch.setattr(ShardOutput, "commit_part", real_put)
    before = replace(llm.metrics)
    report = run_job(config, llm=llm)
    assert report.shards[0].num_resumed_rows == 3  # the first committed part
    assert llm.metrics.num_requests - before.num_requests == 7
    ids = read_result_table(str(tmp_path / "out"))["id"].to_pylist()
    assert sorted(ids) == sorted(f"q{i}" for i in range(10))
    parts_on_disk = sorted(
        p.name for p in (tmp_path / "out" / "shards" / "00000" / "parts").iterdir()
    )
    assert parts_on_disk == sorted(_manifest_parts(tmp_path))  # the orphan is gone


class SimulatedKill(BaseException):
    """Stands in for kill -9: nothing in the pipeline catches it."""


def _manifest_parts(tmp_path: Path) -> list[str]:
    manifest = json.loads((tmp_path / "out" / "shards" / "00000" / "manifest.json").read_text())
    return [p["name"] for p in manifest["parts"]]


def test_overwrite_redoes_complete_shards(llm, job_config, tmp_path: Path):
    _chat_dataset(tmp_path / "chat.parquet", num_unique=4, num_duplicates=0)
    run_job(_chat_config(job_config, tmp_path), llm=llm)
    before = replace(llm.metrics)
    report = run_job(_chat_config(job_config, tmp_path, output={"overwrite": True}), llm=llm)
    assert llm.metrics.num_requests - before.num_requests == 4
    assert all(s.status == "generated" for s in report.shards)
    assert sorted(read_result_table(str(tmp_path / "out"))["id"].to_pylist()) == [
        "q0",
        "q1",
        "q2",
        "q3",
    ]


def test_a_different_job_on_the_same_output_is_refused(llm, job_config, tmp_path: Path):
    _chat_dataset(tmp_path / "chat.parquet", num_unique=2, num_duplicates=0)
    run_job(_chat_config(job_config, tmp_path), llm=llm)
    with pytest.raises(ValueError, match="holds another job's results"):
        run_job(_chat_config(job_config, tmp_path, sampling={"max_tokens": 3}), llm=llm)


def test_openai_jsonl_in_and_out(llm, job_config, tmp_path: Path):
    sample = Path(__file__).parents[2] / "data_samples" / "openai_batch.jsonl"
    config = job_config(
        str(sample),
        str(tmp_path / "out"),
        input={"format": "openai-jsonl"},
        output={"format": "openai-jsonl"},
    )
    run_job(config, llm=llm)
    records = list(iter_result_records(str(tmp_path / "out")))
    custom_ids = Counter(r["custom_id"] for r in records)
    assert len(records) == 24 and max(custom_ids.values()) == 1
    by_id = {r["custom_id"]: r for r in records}
    assert by_id["request-nobody"]["error"]["message"].endswith("body: missing")
    broken = [r for r in records if r["error"] and "invalid JSON" in r["error"]["message"]]
    assert len(broken) == 1
    ok = by_id["request-1"]["response"]
    assert ok["status_code"] == 200
    assert ok["body"]["choices"][0]["message"]["role"] == "assistant"
    assert 0 < ok["body"]["usage"]["completion_tokens"] <= 8  # the line's max_tokens
    assert by_id["request-21"]["response"]["body"]["choices"] == ok["body"]["choices"]


def test_missing_prompt_column_fails_before_the_model_loads(
    job_config, tmp_path: Path, monkeypatch
):
    pq.write_table(pa.table({"question": ["hi"]}), tmp_path / "in.parquet")

    def no_model(config):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("pipeline.runner.load_job_llm", no_model)
    with pytest.raises(ValueError, match="input column 'prompt' not found in in.parquet"):
        run_job(job_config(str(tmp_path / "in.parquet"), str(tmp_path / "out")))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="bad.parquet is not readable Parquet"):
        run_job(job_config(str(tmp_path / "bad.parquet"), str(tmp_path / "out2")))
    with pytest.raises(FileNotFoundError, match="no such file"):
        run_job(job_config(str(tmp_path / "absent.parquet"), str(tmp_path / "out3")))


def test_plan_predicts_prefix_hits_and_dedup_without_loading_weights(
    job_config, smollm2_dir, tmp_path: Path, monkeypatch
):
    rows = _chat_dataset(tmp_path / "chat.parquet", num_unique=8, num_duplicates=4)

    def no_weights(*args, **kwargs):
        raise AssertionError("planning must not build the model")

    monkeypatch.setattr("engine.llm.build_model", no_weights)
    plan = plan_job(_chat_config(job_config, tmp_path, sharding={"num_shards": 1}))
    stats = plan.shards[0].stats
    assert (stats.num_rows, stats.num_requests) == (12, 8)
    assert stats.dedup_ratio == pytest.approx(4 / 12)
    # every chat after the first finds the full blocks of the shared system prefix cached
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    encoded = [
        tokenizer.encode(
            tokenizer.apply_chat_template(
                r["messages"], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )
        for r in rows[:8]
    ]
    shared = next(i for i, column in enumerate(zip(*encoded, strict=False)) if len(set(column)) > 1)
    assert stats.num_prompt_tokens == sum(len(e) for e in encoded)
    assert stats.num_predicted_cached_tokens == 7 * (shared // 16) * 16
    assert stats.predicted_hit_rate > 0.3


def test_logprobs_are_stored_per_generated_token_when_asked(llm, job_config, tmp_path: Path):
    pq.write_table(pa.table({"prompt": ["Say hi.", "Name a tree."]}), tmp_path / "in.parquet")
    config = job_config(
        str(tmp_path / "in.parquet"),
        str(tmp_path / "out"),
        sampling={"logprobs": 0, "max_tokens": 3},
    )
    run_job(config, llm=llm)
    for row in read_result_table(str(tmp_path / "out")).to_pylist():
        assert len(row["logprobs"]) == row["num_generated_tokens"] > 0
        assert all(lp <= 0.0 for lp in row["logprobs"])
