"""The commit protocol of a shard's output: parts, their commit records, and the manifest.

Layout under the output URL::

    plan.json
    shards/00003/parts/<attempt>-<seq>.parquet     data (or .jsonl); attempt is unique per run
    shards/00003/commits/<attempt>-<seq>.json      {"part", "num_rows", "ids": [...]}
    shards/00003/manifest.json                     written last: the shard is complete

Protocol (every step is one `Store.write_new` / `Store.put_if_absent`, each atomic):

1. A part is written under its final, never-reused name (local: temp file + rename; object
   store: one PUT). It is not trusted yet.
2. Its commit record is written put-if-absent. This is the commit point: a part counts iff its
   commit record exists and the part is there.
3. When every row of the shard is in a committed part, the manifest listing those parts is
   written put-if-absent. Readers of results trust only parts listed in manifests.

A kill -9 anywhere loses at most the rows of the parts being written and duplicates nothing:
before step 2 the part is an orphan nobody trusts, and the rerun regenerates exactly the ids
not yet in a committed part (under a new attempt name); after step 2 its ids are skipped.
Orphan parts are garbage, never read, and deleted once the manifest is written (hidden temp
files of killed local writes are left). One runner per shard at a time is
the orchestrator's job; `finalize` refuses (RuntimeError) a shard where two runners committed
the same id. Overwrite deletes manifest, then commit records, then parts, so an interrupted
overwrite never leaves a commit record pointing at a missing part that would be trusted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline.records import OutputRecord, PartEncoder
from pipeline.storage import Store

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class CommitRecord:
    part: str  # file name under parts/
    num_rows: int
    ids: tuple[str, ...]

    def to_json(self) -> bytes:
        return json.dumps({"part": self.part, "num_rows": self.num_rows, "ids": self.ids}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CommitRecord:
        values = json.loads(data)
        return cls(values["part"], values["num_rows"], tuple(values["ids"]))


def shard_dir(index: int) -> str:
    return f"shards/{index:05d}"


def new_attempt_id() -> str:
    """Unique per run of a shard; sorts by start time."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


class ShardOutput:
    """One shard's output folder. Methods mutate the store only as the protocol describes."""

    def __init__(self, store: Store, index: int, job_fingerprint: str) -> None:
        self.store = store
        self.index = index
        self.job_fingerprint = job_fingerprint
        self.dir = shard_dir(index)

    def manifest(self) -> dict[str, Any] | None:
        """The shard's manifest, or None while it is incomplete."""
        name = f"{self.dir}/{MANIFEST_FILE}"
        if not self.store.exists(name):
            return None
        return dict(json.loads(self.store.read_bytes(name)))

    def is_complete(self) -> bool:
        """True when the manifest exists. ValueError if it belongs to another job."""
        manifest = self.manifest()
        if manifest is None:
            return False
        if manifest["job_fingerprint"] != self.job_fingerprint:
            raise ValueError(
                f"shard {self.index} at {self.store.url} was completed by another job "
                f"(fingerprint {manifest['job_fingerprint']}); set output.overwrite"
            )
        return True

    def committed(self) -> list[CommitRecord]:
        """Commit records whose part exists, in name order."""
        parts = set(self.store.list_names(f"{self.dir}/parts"))
        records = []
        for name in self.store.list_names(f"{self.dir}/commits"):
            record = CommitRecord.from_json(self.store.read_bytes(f"{self.dir}/commits/{name}"))
            if record.part in parts:
                records.append(record)
        return records

    def committed_ids(self) -> set[str]:
        return {i for record in self.committed() for i in record.ids}

    def clear(self) -> None:
        """Forget everything of this shard (for overwrite), in the order safe against a crash."""
        self.store.delete(f"{self.dir}/{MANIFEST_FILE}")
        self.store.delete(f"{self.dir}/commits")
        self.store.delete(f"{self.dir}/parts")

    def commit_part(self, part: str, data: bytes, ids: Sequence[str]) -> CommitRecord:
        """Steps 1 and 2: write the part, then its commit record. part must be a fresh name."""
        self.store.write_new(f"{self.dir}/parts/{part}", data)
        record = CommitRecord(part, len(ids), tuple(ids))
        stem = part.rsplit(".", 1)[0]
        path = f"{self.dir}/commits/{stem}.json"
        if not self.store.put_if_absent(path, record.to_json()):
            # a retried write whose first attempt landed (the server died before answering)
            # finds its own record: that is success, anything else is a second writer
            if self.store.read_bytes(path) != record.to_json():
                raise RuntimeError(f"shard {self.index}: commit record of {part} already exists")
        return record

    def finalize(self, expected_ids: Iterable[str], report: dict[str, Any]) -> dict[str, Any]:
        """Step 3: check every expected id is in exactly one committed part, then write the
        manifest (put-if-absent; if another runner wrote it first, that one is returned).
        The runner that wrote the manifest then deletes the parts it does not list (orphans of
        killed attempts, never read by anyone)."""
        records = self.committed()
        seen: dict[str, str] = {}
        for record in records:
            for row_id in record.ids:
                if row_id in seen:
                    raise RuntimeError(
                        f"shard {self.index}: id {row_id!r} is in parts {seen[row_id]} and "
                        f"{record.part}; two runners wrote this shard at once"
                    )
                seen[row_id] = record.part
        expected = set(expected_ids)
        missing = expected - seen.keys()
        if missing:
            raise RuntimeError(
                f"shard {self.index}: {len(missing)} rows have no committed output "
                f"(e.g. {sorted(missing)[0]!r})"
            )
        manifest = {
            "job_fingerprint": self.job_fingerprint,
            "shard": self.index,
            "num_rows": len(seen),
            "parts": [{"name": r.part, "num_rows": r.num_rows} for r in records],
            "completed_at": time.time(),
            "report": report,
        }
        name = f"{self.dir}/{MANIFEST_FILE}"
        if self.store.put_if_absent(name, json.dumps(manifest, indent=1).encode()):
            listed = {r.part for r in records}
            for part in self.store.list_names(f"{self.dir}/parts"):
                if part not in listed:
                    self.store.delete(f"{self.dir}/parts/{part}")
            return manifest
        stored = self.manifest()
        assert stored is not None
        return stored


class PartWriter:
    """Buffers output records and commits a part every rows_per_part records (and on flush).

    With background=True, parts are encoded and committed (steps 1 and 2) on one writer thread,
    in order, so a slow object store does not pause generation; at most max_in_flight parts wait
    for it (add blocks beyond that). A crash loses at most the parts in flight and the buffer,
    which the rerun regenerates. A failed commit is raised by the next add() or flush().
    Call flush() to commit everything, and close() in any case (it waits for the thread).
    """

    def __init__(
        self,
        output: ShardOutput,
        encoder: PartEncoder,
        rows_per_part: int,
        *,
        background: bool = True,
        max_in_flight: int = 2,
    ) -> None:
        self.output = output
        self.encoder = encoder
        self.rows_per_part = rows_per_part
        self.attempt = new_attempt_id()
        self.buffer: list[OutputRecord] = []
        self.num_parts = 0  # parts handed to commit (all committed once flush() returns)
        self.num_rows = 0
        self.max_in_flight = max_in_flight
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-part-writer")
            if background
            else None
        )
        self._in_flight: deque[Future[None]] = deque()

    def add(self, records: Iterable[OutputRecord]) -> None:
        self.buffer.extend(records)
        while len(self.buffer) >= self.rows_per_part:
            self._commit(self.buffer[: self.rows_per_part])
            del self.buffer[: self.rows_per_part]
        self._collect(wait=False)

    def flush(self) -> None:
        """Commit the buffer and wait until every part is committed."""
        if self.buffer:
            self._commit(self.buffer)
            self.buffer = []
        self._collect(wait=True)

    def close(self) -> None:
        """Stop the writer thread after the parts already handed to it (errors were or will
        be raised by add/flush; close itself does not raise them)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _commit(self, records: Sequence[OutputRecord]) -> None:
        part = f"{self.attempt}-{self.num_parts:05d}{self.encoder.suffix}"
        self.num_parts += 1
        self.num_rows += len(records)
        if self._executor is None:
            self._write(part, list(records))
            return
        while len(self._in_flight) >= self.max_in_flight:
            self._in_flight.popleft().result()
        self._in_flight.append(self._executor.submit(self._write, part, list(records)))

    def _write(self, part: str, records: list[OutputRecord]) -> None:
        self.output.commit_part(part, self.encoder.encode(records), [r.id for r in records])

    def _collect(self, wait: bool) -> None:
        """Take finished commits off the queue (all of them if wait), raising the first error."""
        while self._in_flight and (wait or self._in_flight[0].done()):
            self._in_flight.popleft().result()
