"""Reading a job's results the way the commit protocol allows: only parts listed in the
manifests of complete shards. Orphan parts, commit records of incomplete shards and temp files
are never read."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.commit import MANIFEST_FILE, shard_dir
from pipeline.plan import read_plan
from pipeline.storage import Store


def complete_manifests(
    url: str, storage_options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The manifest of every complete shard of the job at url, by shard index."""
    store = Store(url, storage_options)
    plan = read_plan(store)
    if plan is None:
        raise FileNotFoundError(f"{url} holds no job output (no plan.json)")
    manifests = []
    for shard in plan.shards:
        name = f"{shard_dir(shard.index)}/{MANIFEST_FILE}"
        if store.exists(name):
            manifests.append(dict(json.loads(store.read_bytes(name))))
    return manifests


def iter_result_parts(
    url: str, storage_options: dict[str, Any] | None = None
) -> Iterator[tuple[str, bytes]]:
    """(part name, bytes) of every trusted part, shard by shard."""
    store = Store(url, storage_options)
    for manifest in complete_manifests(url, storage_options):
        folder = f"{shard_dir(manifest['shard'])}/parts"
        for part in manifest["parts"]:
            yield part["name"], store.read_bytes(f"{folder}/{part['name']}")


def read_result_table(url: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """All trusted Parquet parts as one table (for tests and small jobs: it is all in memory)."""
    tables = [
        pq.read_table(io.BytesIO(data))
        for name, data in iter_result_parts(url, storage_options)
        if name.endswith(".parquet")
    ]
    if not tables:
        raise FileNotFoundError(f"{url} has no complete Parquet shards")
    return pa.concat_tables(tables)


def iter_result_records(
    url: str, storage_options: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Every trusted output record as a dict, whatever the output format."""
    for name, data in iter_result_parts(url, storage_options):
        if name.endswith(".parquet"):
            yield from pq.read_table(io.BytesIO(data)).to_pylist()
        else:
            for line in data.splitlines():
                if line.strip():
                    yield json.loads(line)
