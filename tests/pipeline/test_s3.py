"""The S3 path against a moto server on 127.0.0.1: listing and reading the dataset, conditional
writes, the commit protocol without rename, resume."""

from __future__ import annotations

import io
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import read_result_table, run_job
from pipeline.commit import ShardOutput
from pipeline.storage import Store, list_dataset

moto_server = pytest.importorskip("moto.server")

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server; credentials come from the environment, as in production."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"batchgen-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def _options(endpoint: str) -> dict[str, str]:
    return {"endpoint_url": endpoint}


def _upload_parquet(endpoint: str, bucket: str, key: str, rows: list[dict]) -> None:
    import boto3

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    boto3.client("s3", endpoint_url=endpoint).put_object(
        Bucket=bucket, Key=key, Body=sink.getvalue()
    )


def test_conditional_put_refuses_the_second_writer_on_s3(s3_endpoint: str, bucket: str):
    store = Store(f"s3://{bucket}/out", _options(s3_endpoint))
    assert store.put_if_absent("shards/00000/manifest.json", b"first")
    assert not store.put_if_absent("shards/00000/manifest.json", b"second")
    assert store.read_bytes("shards/00000/manifest.json") == b"first"


def test_job_reads_and_writes_s3_commits_through_manifests_and_resumes(
    llm, job_config, s3_endpoint: str, bucket: str
):
    rows = [{"id": f"s{i}", "prompt": f"Say the number {i % 4}."} for i in range(10)]
    _upload_parquet(s3_endpoint, bucket, "in/part-0.parquet", rows[:6])
    _upload_parquet(s3_endpoint, bucket, "in/part-1.parquet", rows[6:])
    options = _options(s3_endpoint)
    assert [f.name for f in list_dataset(f"s3://{bucket}/in/", (".parquet",), options)] == [
        "part-0.parquet",
        "part-1.parquet",
    ]
    out = f"s3://{bucket}/out"
    config = job_config(
        f"s3://{bucket}/in/",
        out,
        input={"id_column": "id"},
        output={"rows_per_part": 2},
        sharding={"num_shards": 2},
        storage_options=options,
    )
    run_job(config, llm=llm)
    # an orphan part (written, never committed) must not be read
    store = Store(out, options)
    store.write_new("shards/00000/parts/zz-orphan-00000.parquet", b"garbage")
    table = read_result_table(out, options)
    assert sorted(table["id"].to_pylist()) == sorted(r["id"] for r in rows)
    assert all(table["error"].to_pylist()[i] is None for i in range(table.num_rows))
    assert ShardOutput(store, 1, config.fingerprint).is_complete()

    before = replace(llm.metrics)
    report = run_job(config, llm=llm)
    assert llm.metrics.num_requests == before.num_requests
    assert [s.status for s in report.shards] == ["skipped", "skipped"]
