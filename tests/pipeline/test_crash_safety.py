"""Crash safety of the real job: `batchgen run` in a subprocess is killed with SIGKILL at chosen
points and rerun until it completes; then every input id is in the committed results exactly
once and every greedy text equals that of an uninterrupted run. On local disk and on a real S3
server (Ceph RADOS Gateway, tests/s3_server.py), where the gateway is also restarted while the
job writes and in the middle of an upload, and no torn object may ever be visible.

Kill points are deterministic. Two kinds:

- a pause point: the job subprocess (`job_main`, which is `batchgen run` plus an optional pause)
  stops at a named place in the real code, writes a marker file and waits; the test sees the
  marker and kills it there (what kill -9 at that instruction would do):
  ``plan:N`` entering the N-th shard's stats while planning (no plan.json yet);
  ``commit:N`` before the N-th commit record, its part already written (an orphan part);
  ``rename:N`` (local disk) before the N-th part's temp file is renamed to its final name.
- a storage trigger: the plain job runs and the test polls the output store, killing it right
  after the k-th commit record appears (or a seeded random delay after that).

On CPU an engine step costs ~0.1 s, so the dataset is 72 rows in 3 shards, 3 rows per part
(24 commit points), 2-6 new tokens per row, at most 8 sequences in a batch so that parts
commit one after another rather than in one burst.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import iter_result_records, load_job_config, run_job
from pipeline.commit import MANIFEST_FILE, CommitRecord, shard_dir
from pipeline.plan import PLAN_FILE
from pipeline.storage import TEMP_PREFIX, Store
from tests.s3_server import CephS3Server

REPO = Path(__file__).parents[2]
SEED = 20261127
NUM_ROWS = 72
NUM_SHARDS = 3
JOB_TIMEOUT_S = 120.0
PAUSE_ENV = "BATCHGEN_TEST_PAUSE_AT"
MARKER_ENV = "BATCHGEN_TEST_PAUSE_MARKER"

SYSTEM_PROMPTS = (
    "You are a terse assistant. Reply with a single short sentence and nothing else.",
    "You are a patient tutor. Explain things to a ten year old, with one small example.",
)
TOPICS = ("rivers", "prime numbers", "bread", "the moon", "volcanoes", "chess", "bees", "rain")


# -- the job subprocess --------------------------------------------------------------------------


def _pause(marker: Path) -> None:
    """Tell the test we are at the pause point, then wait for its SIGKILL."""
    marker.write_text(str(os.getpid()))
    threading.Event().wait()


def _pause_in_plan(nth: int, marker: Path) -> None:
    import pipeline.plan as plan

    real = plan.shard_stats
    calls = Counter[str]()

    def shard_stats(*args: Any, **kwargs: Any) -> Any:
        calls["plan"] += 1
        if calls["plan"] == nth:
            _pause(marker)
        return real(*args, **kwargs)

    plan.shard_stats = shard_stats  # type: ignore[assignment]


def _pause_before_commit_record(nth: int, marker: Path) -> None:
    real = Store.put_if_absent
    calls = Counter[str]()

    def put_if_absent(self: Store, rel: str, data: bytes) -> bool:
        if "/commits/" in rel:
            calls["commit"] += 1
            if calls["commit"] == nth:
                _pause(marker)
        return real(self, rel, data)

    Store.put_if_absent = put_if_absent  # type: ignore[method-assign]


def _pause_before_part_rename(nth: int, marker: Path) -> None:
    real = os.replace
    calls = Counter[str]()

    def replace(src: Any, dst: Any) -> None:
        if "/parts/" in str(dst):
            calls["rename"] += 1
            if calls["rename"] == nth:
                _pause(marker)
        real(src, dst)

    os.replace = replace  # type: ignore[assignment]


PAUSE_POINTS: dict[str, Callable[[int, Path], None]] = {
    "plan": _pause_in_plan,
    "commit": _pause_before_commit_record,
    "rename": _pause_before_part_rename,
}


def job_main() -> None:
    """The job subprocess: `batchgen <args>`, paused at $BATCHGEN_TEST_PAUSE_AT if set."""
    point = os.environ.get(PAUSE_ENV)
    if point:
        name, _, nth = point.partition(":")
        PAUSE_POINTS[name](int(nth), Path(os.environ[MARKER_ENV]))
    from pipeline.cli import main

    sys.exit(main(sys.argv[1:]))


@dataclass
class JobProcess:
    popen: subprocess.Popen[bytes]
    log: Path
    marker: Path

    def log_tail(self, num_chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-num_chars:]

    def wait_until(self, condition: Callable[[], bool], what: str, poll_s: float = 0.02) -> None:
        """Return once condition() holds (polled every poll_s); fail if the job exits first
        or JOB_TIMEOUT_S passes."""
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not condition():
            if self.popen.poll() is not None:
                pytest.fail(
                    f"the job exited ({self.popen.returncode}) before {what}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}\n{self.log_tail()}")
            time.sleep(poll_s)

    def kill_when(self, condition: Callable[[], bool], what: str, delay_s: float = 0.0) -> None:
        """SIGKILL the job delay_s after condition() holds; fail if it exits before."""
        self.wait_until(condition, what)
        time.sleep(delay_s)
        if self.popen.poll() is not None:
            pytest.fail(
                f"the job exited ({self.popen.returncode}) before its kill\n{self.log_tail()}"
            )
        self.kill()

    def kill_at_pause(self) -> None:
        self.kill_when(self.marker.exists, f"its pause point ({self.log.stem})")

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()

    def wait(self) -> int:
        try:
            return self.popen.wait(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the job did not finish in {JOB_TIMEOUT_S} s\n{self.log_tail()}")


@dataclass
class Job:
    """`batchgen run --config FILE`, each run a fresh subprocess with its own log."""

    config_file: Path
    work_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    num_runs: int = 0

    def start(self, pause_at: str | None = None) -> JobProcess:
        self.num_runs += 1
        name = f"run{self.num_runs}-{(pause_at or 'plain').replace(':', '')}"
        log, marker = self.work_dir / f"{name}.log", self.work_dir / f"{name}.paused"
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        env.pop(PAUSE_ENV, None)
        if pause_at:
            env.update({PAUSE_ENV: pause_at, MARKER_ENV: str(marker)})
        code = "from tests.pipeline.test_crash_safety import job_main; job_main()"
        argv = [sys.executable, "-c", code, "run", "--config", str(self.config_file)]
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [*argv, "--no-progress"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        return JobProcess(popen, log, marker)

    def run_to_completion(self, max_runs: int = 3) -> int:
        """Rerun until a run exits 0; returns how many runs that took."""
        for attempt in range(1, max_runs + 1):
            process = self.start()
            if process.wait() == 0:
                return attempt
        pytest.fail(f"the job did not complete in {max_runs} runs\n{process.log_tail()}")


# -- dataset, config, reference ------------------------------------------------------------------


def dataset_rows() -> list[dict[str, Any]]:
    """Chats under two system prompts and plain prompts; every 7th row repeats the request of
    the row 5 before it under its own id (dedup fans one generation out to both)."""
    rows = []
    for i in range(NUM_ROWS):
        j = i - 5 if i % 7 == 6 else i
        topic = f"{TOPICS[j % len(TOPICS)]} (note {j})"
        row: dict[str, Any] = {"id": f"row-{i:03d}", "prompt": None, "messages": None}
        if j % 3 == 0:
            row["prompt"] = f"Here is one true fact about {topic}:"
        else:
            chat = [
                {"role": "system", "content": SYSTEM_PROMPTS[j % 2]},
                {"role": "user", "content": f"Tell me about {topic}."},
            ]
            row["messages"] = json.dumps(chat)
        row["max_new"] = 2 + j % 5
        rows.append(row)
    return rows


def write_job_file(
    path: Path,
    model_dir: Path,
    input_url: str,
    output_url: str,
    storage_options: dict[str, Any] | None = None,
) -> Path:
    config = {
        "model": str(model_dir),
        "input": {
            "url": input_url,
            "id_column": "id",
            "prompt_column": "prompt",
            "messages_column": "messages",
            "override_columns": {"max_tokens": "max_new"},
        },
        "output": {"url": output_url, "rows_per_part": 3},
        "sampling": {"max_tokens": 4, "temperature": 0.0},
        "sharding": {"num_shards": NUM_SHARDS},
        "engine": {"num_blocks": 256, "max_num_seqs": 8, "max_num_batched_tokens": 512},
        "storage_options": storage_options or {},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash-input") / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(dataset_rows()), path, row_group_size=16)
    return path


@pytest.fixture(scope="module")
def reference_texts(
    smollm2_dir: Path, dataset_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """id -> text of one uninterrupted run of the same job, in this process."""
    folder = tmp_path_factory.mktemp("crash-reference")
    config_file = write_job_file(
        folder / "job.yaml", smollm2_dir, str(dataset_file), str(folder / "out")
    )
    run_job(load_job_config(config_file))
    texts = {r["id"]: r["text"] for r in iter_result_records(str(folder / "out"))}
    assert len(texts) == NUM_ROWS and all(texts.values())
    return texts


# -- what the store must show --------------------------------------------------------------------


def num_objects(store: Store, folder: str) -> int:
    return sum(len(store.list_names(f"{shard_dir(i)}/{folder}")) for i in range(NUM_SHARDS))


def assert_no_torn_object(store: Store) -> None:
    """Every object a reader can see is whole: each visible part (orphans included, unless
    deleted after their shard's manifest) is complete Parquet, each commit record names exactly
    its part's ids, and each manifest lists parts that exist and hold the rows it says. Safe
    while a job writes: the manifest is read before the parts are listed (its parts were
    written before it), parts before commit records."""
    for index in range(NUM_SHARDS):
        folder = shard_dir(index)
        manifest = None
        if store.exists(f"{folder}/{MANIFEST_FILE}"):
            manifest = json.loads(store.read_bytes(f"{folder}/{MANIFEST_FILE}"))
        listed = {p["name"] for p in manifest["parts"]} if manifest else set()
        parts = {}
        for name in store.list_names(f"{folder}/parts"):
            try:
                data = store.read_bytes(f"{folder}/parts/{name}")
            except FileNotFoundError:
                # an orphan deleted by the finalize that wrote a manifest meanwhile
                assert name not in listed, f"shard {index}: listed part {name} vanished"
                continue
            parts[name] = pq.read_table(io.BytesIO(data))
        for name in store.list_names(f"{folder}/commits"):
            record = CommitRecord.from_json(store.read_bytes(f"{folder}/commits/{name}"))
            if record.part in parts:
                assert parts[record.part]["id"].to_pylist() == list(record.ids), name
        for part in manifest["parts"] if manifest else ():
            assert part["name"] in parts, f"shard {index}: manifest lists a missing part"
            assert parts[part["name"]].num_rows == part["num_rows"], part


def assert_every_id_once_with_reference_texts(
    url: str, reference: dict[str, str], storage_options: dict[str, Any] | None = None
) -> None:
    """Read as pipeline.results does (parts listed in complete manifests only)."""
    records = list(iter_result_records(url, storage_options))
    counts = Counter(r["id"] for r in records)
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted(reference.keys() - counts.keys())
    assert not duplicated, f"{len(duplicated)} ids twice, e.g. {duplicated[:3]}"
    assert not missing, f"{len(missing)} ids missing, e.g. {missing[:3]}"
    assert counts.keys() == reference.keys()
    assert [r for r in records if r["error"] is not None] == []
    differ = {r["id"]: (r["text"], reference[r["id"]]) for r in records}
    differ = {i: texts for i, texts in differ.items() if texts[0] != texts[1]}
    assert not differ, f"{len(differ)} greedy texts differ from the uninterrupted run: {differ}"


def kill_at_the_four_common_points(job: Job, store: Store) -> None:
    """SIGKILL mid-plan, right after the 4th commit record, between a part and its commit
    record, and a seeded random delay after the next commit record; check the store after each."""
    job.start(pause_at="plan:2").kill_at_pause()
    assert not store.exists(PLAN_FILE), "killed while planning: no plan may be visible"

    job.start().kill_when(lambda: num_objects(store, "commits") >= 4, "the 4th commit record")
    assert_no_torn_object(store)

    job.start(pause_at="commit:3").kill_at_pause()
    assert num_objects(store, "parts") > num_objects(store, "commits"), "no orphan part"
    assert_no_torn_object(store)

    done = num_objects(store, "commits")
    delay_s = random.Random(SEED).uniform(0.05, 0.8)
    job.start().kill_when(
        lambda: num_objects(store, "commits") > done, "one more commit record", delay_s=delay_s
    )
    assert_no_torn_object(store)


# -- local disk ----------------------------------------------------------------------------------


def test_kill_9_at_five_points_on_local_disk_then_rerun_gives_every_id_once_and_same_texts(
    smollm2_dir: Path, dataset_file: Path, reference_texts: dict[str, str], tmp_path: Path
):
    out = tmp_path / "out"
    job = Job(
        write_job_file(tmp_path / "job.yaml", smollm2_dir, str(dataset_file), str(out)), tmp_path
    )
    store = Store(str(out))
    kill_at_the_four_common_points(job, store)

    job.start(pause_at="rename:2").kill_at_pause()
    temp_files = [p for p in out.glob("shards/*/parts/*") if p.name.startswith(TEMP_PREFIX)]
    assert temp_files, "killed before a rename: the part's bytes sit under a hidden temp name"
    assert_no_torn_object(store)

    assert job.run_to_completion() == 1
    assert_no_torn_object(store)
    assert_every_id_once_with_reference_texts(str(out), reference_texts)


# -- S3: a real server (Ceph RADOS Gateway) ------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    name: str
    storage_options: dict[str, Any]
    env: dict[str, str]

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"


@pytest.fixture
def bucket(ceph_s3: CephS3Server, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket on the Ceph gateway; its credentials in this process's environment."""
    import boto3

    for key, value in ceph_s3.env().items():
        monkeypatch.setenv(key, value)
    name = f"crash-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=ceph_s3.endpoint).create_bucket(Bucket=name)
    return Bucket(name, {"endpoint_url": ceph_s3.endpoint}, ceph_s3.env())


def s3_job(bucket: Bucket, smollm2_dir: Path, dataset_file: Path, work_dir: Path) -> Job:
    """The dataset uploaded to the bucket and the job reading it there, writing to out/."""
    Store(bucket.url("in"), bucket.storage_options).write_new(
        dataset_file.name, dataset_file.read_bytes()
    )
    config_file = write_job_file(
        work_dir / "job.yaml",
        smollm2_dir,
        bucket.url("in/"),
        bucket.url("out"),
        bucket.storage_options,
    )
    return Job(config_file, work_dir, bucket.env)


@pytest.mark.s3
def test_an_upload_cut_off_by_a_gateway_kill_never_becomes_visible(
    ceph_s3: CephS3Server, bucket: Bucket
):
    # A writer without retries, so the cut-off PUT is its only attempt.
    options = {**bucket.storage_options, "config_kwargs": {"retries": {"max_attempts": 1}}}
    store = Store(bucket.url("cut"), options)
    store.fs.retries = 1
    payload = os.urandom(64 << 20)  # one PUT (s3fs uses multipart from 100 MiB)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            store.write_new("part.parquet", payload)
        except Exception as exc:  # the failure is the expected outcome; the test inspects it
            failures.append(exc)

    start = ceph_s3.gateway_bytes_received()
    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 30
    while ceph_s3.gateway_bytes_received() - start < 16 << 20:
        assert writer.is_alive() and time.monotonic() < deadline, "the upload never streamed"
        time.sleep(0.001)
    received = ceph_s3.gateway_bytes_received() - start
    ceph_s3.kill_gateway()
    writer.join(timeout=60)
    ceph_s3.start_gateway()
    assert received < len(payload), "the gateway had the whole body before it was killed"
    assert failures, "the cut-off upload reported success"
    assert not store.exists("part.parquet")
    assert store.list_names("") == []
    store.write_new("part.parquet", payload)  # the restarted gateway takes the retry whole
    assert store.read_bytes("part.parquet") == payload


@pytest.mark.s3
def test_kill_9_at_four_points_on_s3_then_rerun_gives_every_id_once_and_same_texts(
    smollm2_dir: Path,
    dataset_file: Path,
    reference_texts: dict[str, str],
    bucket: Bucket,
    tmp_path: Path,
):
    job = s3_job(bucket, smollm2_dir, dataset_file, tmp_path)
    store = Store(bucket.url("out"), bucket.storage_options)
    kill_at_the_four_common_points(job, store)
    assert job.run_to_completion() == 1
    assert_no_torn_object(store)
    assert_every_id_once_with_reference_texts(
        bucket.url("out"), reference_texts, bucket.storage_options
    )


class TornObjectWatcher:
    """A reader on a background thread that checks `assert_no_torn_object` over and over while
    the job writes and the gateway restarts. Requests that fail because the gateway is down
    are not findings; an object that reads but is incomplete or inconsistent is."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.findings: list[str] = []
        self.num_clean_checks = 0
        self.num_unreachable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="torn-object-watcher")

    def __enter__(self) -> TornObjectWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                assert_no_torn_object(self.store)
                self.num_clean_checks += 1
            except (AssertionError, pa.ArrowInvalid, json.JSONDecodeError) as exc:
                self.findings.append(f"{type(exc).__name__}: {exc}")
            except Exception:  # gateway down or restarting: no answer is not a torn object
                self.num_unreachable += 1
            self._stop.wait(0.05)


@pytest.mark.s3
def test_a_gateway_restart_while_the_job_writes_shows_no_torn_object_and_loses_nothing(
    smollm2_dir: Path,
    dataset_file: Path,
    reference_texts: dict[str, str],
    ceph_s3: CephS3Server,
    bucket: Bucket,
    tmp_path: Path,
):
    job = s3_job(bucket, smollm2_dir, dataset_file, tmp_path)
    store = Store(bucket.url("out"), bucket.storage_options)
    with TornObjectWatcher(Store(bucket.url("out"), bucket.storage_options)) as watcher:
        process = job.start()
        process.wait_until(lambda: num_objects(store, "commits") >= 5, "the 5th commit record")
        ceph_s3.kill_gateway()  # and keep it down until the job's S3 client gives up
        exit_code = process.wait()
        ceph_s3.start_gateway()
        checks_before_restart = watcher.num_clean_checks
        assert exit_code != 0, "the job cannot finish while the gateway is down"
        assert job.run_to_completion() == 1
        deadline = time.monotonic() + 10
        while watcher.num_clean_checks <= checks_before_restart and time.monotonic() < deadline:
            time.sleep(0.05)
    assert watcher.findings == []
    assert watcher.num_clean_checks > checks_before_restart > 0
    assert_no_torn_object(store)
    assert_every_id_once_with_reference_texts(
        bucket.url("out"), reference_texts, bucket.storage_options
    )
