"""The commit protocol on local and memory:// stores, without the engine."""

from __future__ import annotations

import io
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commit import PartWriter, ShardOutput
from pipeline.config import DataFormat
from pipeline.records import OutputRecord, PartEncoder
from pipeline.storage import Store


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "out"))
    return Store(f"memory://commit-{uuid.uuid4().hex[:8]}/out")


def _record(row_id: str, carried: int = 0) -> OutputRecord:
    return OutputRecord(
        id=row_id,
        row_index=int(row_id[1:]),
        carried={"topic": carried},
        text=f"text of {row_id}",
        finish_reason="length",
        error=None,
        num_prompt_tokens=5,
        num_generated_tokens=2,
        num_cached_tokens=0,
        is_duplicate=False,
        logprobs=None,
        params_fingerprint="fp",
    )


def _encoder(fmt: DataFormat = DataFormat.PARQUET) -> PartEncoder:
    return PartEncoder(fmt, "model", {"topic": pa.int64()}, with_logprobs=False)


def test_put_if_absent_lets_exactly_one_writer_win(store: Store):
    results: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(store.put_if_absent("m.json", b"%d" % i))
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.read_bytes("m.json") in {b"%d" % i for i in range(8)}


def test_writer_commits_a_part_every_n_rows_and_the_manifest_lists_them(store: Store):
    output = ShardOutput(store, 3, "job")
    with PartWriter(output, _encoder(), rows_per_part=4) as writer:
        writer.add(_record(f"r{i}") for i in range(10))
        assert writer.num_parts == 2  # 8 rows handed to commit, 2 buffered
        writer.flush()
    manifest = output.finalize([f"r{i}" for i in range(10)], {"rows": 10})
    assert [p["num_rows"] for p in manifest["parts"]] == [4, 4, 2]
    assert output.is_complete()
    table = pa.concat_tables(
        pq.read_table(io.BytesIO(store.read_bytes(f"shards/00003/parts/{p['name']}")))
        for p in manifest["parts"]
    )
    assert table["id"].to_pylist() == [f"r{i}" for i in range(10)]
    assert table.schema.field("topic").type == pa.int64()


def test_a_part_without_commit_record_is_not_trusted(store: Store):
    output = ShardOutput(store, 0, "job")
    output.commit_part("a-00000.parquet", _encoder().encode([_record("r1")]), ["r1"])
    # a crash after the part was written but before its commit record:
    store.write_new("shards/00000/parts/b-00000.parquet", _encoder().encode([_record("r2")]))
    assert output.committed_ids() == {"r1"}
    with pytest.raises(RuntimeError, match="1 rows have no committed output"):
        output.finalize(["r1", "r2"], {})
    assert output.manifest() is None


def test_a_commit_record_whose_part_is_gone_is_not_trusted(store: Store):
    output = ShardOutput(store, 0, "job")
    output.commit_part("a-00000.parquet", _encoder().encode([_record("r1")]), ["r1"])
    store.delete("shards/00000/parts/a-00000.parquet")  # an interrupted overwrite
    assert output.committed_ids() == set()


def test_finalize_refuses_an_id_committed_twice(store: Store):
    output = ShardOutput(store, 0, "job")
    output.commit_part("a-00000.parquet", _encoder().encode([_record("r1")]), ["r1"])
    output.commit_part("b-00000.parquet", _encoder().encode([_record("r1")]), ["r1"])
    with pytest.raises(RuntimeError, match="two runners"):
        output.finalize(["r1"], {})


def test_manifest_of_another_job_is_an_error(store: Store):
    ShardOutput(store, 0, "job-a").finalize([], {})
    with pytest.raises(ValueError, match="completed by another job"):
        ShardOutput(store, 0, "job-b").is_complete()


def test_clear_removes_manifest_commits_and_parts(store: Store):
    output = ShardOutput(store, 0, "job")
    output.commit_part("a-00000.parquet", _encoder().encode([_record("r1")]), ["r1"])
    output.finalize(["r1"], {})
    output.clear()
    assert output.manifest() is None and output.committed() == []
    assert store.list_names("shards/00000/parts") == []


def test_local_writes_leave_no_visible_temp_files(tmp_path: Path):
    store = Store(str(tmp_path / "out"))
    store.write_new("x/a.bin", b"1")
    assert store.put_if_absent("x/b.bin", b"2")
    assert not store.put_if_absent("x/b.bin", b"3")
    assert sorted(p.name for p in (tmp_path / "out" / "x").iterdir()) == ["a.bin", "b.bin"]
    assert store.read_bytes("x/b.bin") == b"2"


def test_openai_jsonl_parts_have_the_batch_output_shape():
    import json

    error = OutputRecord(
        **{**_record("r2").__dict__, "text": None, "error": "row 2: prompt: empty"}
    )
    lines = _encoder(DataFormat.OPENAI_JSONL).encode([_record("r1"), error]).decode().splitlines()
    ok, failed = (json.loads(line) for line in lines)
    assert ok["custom_id"] == "r1" and ok["error"] is None
    body = ok["response"]["body"]
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "text of r1"}
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert failed["response"] is None and failed["error"]["message"] == "row 2: prompt: empty"


class GatedOutput(ShardOutput):
    """A shard output whose commits wait until the test opens the gate (a slow object store)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, 0, "job")
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.fail_with: Exception | None = None

    def commit_part(self, part, data, ids):
        self.started.release()
        assert self.gate.wait(timeout=30)
        if self.fail_with is not None:
            raise self.fail_with
        return super().commit_part(part, data, ids)


def test_writer_commits_on_its_thread_and_blocks_only_past_the_parts_in_flight(
    store: Store,
) -> None:
    output = GatedOutput(store)
    with PartWriter(output, _encoder(), rows_per_part=2, max_in_flight=2) as writer:
        # two parts' worth returns at once although no commit can finish yet
        writer.add(_record(f"r{i}") for i in range(4))
        assert output.started.acquire(timeout=30)  # the first commit is waiting at the gate
        assert output.committed_ids() == set()
        third = threading.Thread(target=writer.add, args=([_record("r4"), _record("r5")],))
        third.start()
        third.join(timeout=0.5)
        assert third.is_alive()  # a third part waits for room
        output.gate.set()
        third.join(timeout=30)
        assert not third.is_alive()
        writer.flush()
    assert output.committed_ids() == {f"r{i}" for i in range(6)}
    assert writer.num_parts == 3 and writer.num_rows == 6


def test_a_failed_background_commit_is_raised_by_flush(store: Store) -> None:
    output = GatedOutput(store)
    output.fail_with = OSError("gateway gone")
    with PartWriter(output, _encoder(), rows_per_part=2) as writer:
        # the gate opens only after add returned: the failure cannot surface inside add
        writer.add(_record(f"r{i}") for i in range(2))
        output.gate.set()
        with pytest.raises(OSError, match="gateway gone"):
            writer.flush()
    assert output.committed_ids() == set()


def test_a_failed_background_commit_is_raised_by_the_next_add(store: Store) -> None:
    output = GatedOutput(store)
    output.fail_with = OSError("gateway gone")
    with PartWriter(output, _encoder(), rows_per_part=2) as writer:
        writer.add(_record(f"r{i}") for i in range(2))
        output.gate.set()
        writer._in_flight[0].exception(timeout=30)  # the commit has failed by now
        with pytest.raises(OSError, match="gateway gone"):
            writer.add([_record("r2")])


def test_finalize_deletes_orphan_parts_and_keeps_the_listed_ones(store: Store) -> None:
    output = ShardOutput(store, 0, "job")
    output.commit_part("a-00000.parquet", _encoder().encode([_record("r1")]), ["r1"])
    # a killed attempt's part that never got its commit record
    store.write_new("shards/00000/parts/b-00000.parquet", _encoder().encode([_record("r2")]))
    output.commit_part("c-00000.parquet", _encoder().encode([_record("r2")]), ["r2"])
    manifest = output.finalize(["r1", "r2"], {})
    assert [p["name"] for p in manifest["parts"]] == ["a-00000.parquet", "c-00000.parquet"]
    assert store.list_names("shards/00000/parts") == ["a-00000.parquet", "c-00000.parquet"]
