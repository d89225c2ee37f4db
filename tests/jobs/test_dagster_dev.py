"""`dagster dev -m jobs.definitions` for real, on 127.0.0.1: the asset graph over GraphQL, a
plan run and one shard's run launched through GraphQL, the shard's metadata read back. The
server runs in its own process group, killed in a finally whatever happens."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import ENGINE_OPTIONS, JOB_SECTIONS, PROMPTS, write_prompts

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).parent / "dagster"
START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 120

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
RUN_ERRORS = """
query($id: ID!) {
  logsForRun(runId: $id) {
    ... on EventConnection { events {
      ... on ExecutionStepFailureEvent { error { message } }
      ... on RunFailureEvent { message }
    } }
  }
}"""
SHARD_METADATA = """
query($partition: String!) {
  assetOrError(assetKey: {path: ["generations"]}) {
    ... on Asset { assetMaterializations(partitions: [$partition]) {
      partition
      metadataEntries { label ... on IntMetadataEntry { intValue } }
    } }
  }
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return bytes(response.read())

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert "errors" not in answer, answer["errors"]
        return dict(answer["data"])

    def wait_until_loaded(self, log: Path) -> tuple[str, str]:
        """(location, repository) once the webserver answers and the code location loaded."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                self.get("/server_info")
                data = self.graphql(
                    "{ repositoriesOrError { ... on RepositoryConnection "
                    "{ nodes { name location { name } } } } }"
                )
                nodes = data["repositoriesOrError"].get("nodes") or []
                if nodes:
                    return nodes[0]["location"]["name"], nodes[0]["name"]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise AssertionError(f"dagster dev did not load in {START_TIMEOUT_S}s:\n{tail(log)}")

    def run_job(self, selector: dict[str, str], **params: Any) -> str:
        """Launch a run and wait until it succeeds (AssertionError with its errors if not)."""
        data = self.graphql(LAUNCH, params={"selector": selector, **params})["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        run_id = data["run"]["runId"]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            status = self.graphql(RUN_STATUS, id=run_id)["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"run {run_id} did not finish in {RUN_TIMEOUT_S}s")
        if status != "SUCCESS":
            events = self.graphql(RUN_ERRORS, id=run_id)["logsForRun"]["events"]
            raise AssertionError(f"run {run_id}: {status}: {[e for e in events if e]}")
        return run_id


def tail(path: Path, num_chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-num_chars:] if path.exists() else ""


@pytest.fixture
def dagster_dev(tmp_path: Path, smollm2_dir: Path) -> Iterator[tuple[Server, Path, Path]]:
    """A dagster dev server over a fresh DAGSTER_HOME and a six-row dataset; yields
    (server, output root, server log) and kills its whole process group afterwards."""
    if not DAGSTER.exists():
        pytest.skip("the dagster command is not installed next to this python")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "jobs" / "dagster.yaml", home / "dagster.yaml")
    data = write_prompts(tmp_path / "in" / "prompts.parquet", PROMPTS)
    output = tmp_path / "out"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BATCHGEN_MODEL": str(smollm2_dir),
        "BATCHGEN_ENGINE_OPTIONS": json.dumps(ENGINE_OPTIONS),
        "BATCHGEN_INPUT_URL": str(data),
        "BATCHGEN_OUTPUT_URL": str(output),
        "OMP_NUM_THREADS": "1",
    }
    port = free_port()
    log = tmp_path / "dagster_dev.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(DAGSTER), "dev", "-m", "jobs.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGTERM reaches every child
        )
    try:
        yield Server(port), output, log
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
    try:  # children outliving dagster dev itself
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_dagster_dev_serves_the_assets_and_materializes_the_plan_and_a_shard(
    dagster_dev: tuple[Server, Path, Path],
) -> None:
    server, output, log = dagster_dev
    location, repository = server.wait_until_loaded(log)
    nodes = server.graphql("{ assetNodes { assetKey { path } } }")["assetNodes"]
    assert {"/".join(n["assetKey"]["path"]) for n in nodes} == {
        "shard_plan",
        "generations",
        "run_report",
    }

    def selector(job: str) -> dict[str, str]:
        return {"repositoryLocationName": location, "repositoryName": repository, "jobName": job}

    plan_config = {"input": {"id_column": "id"}, **JOB_SECTIONS}
    server.run_job(
        selector("batchgen_plan"), runConfigData={"ops": {"shard_plan": {"config": plan_config}}}
    )
    assert (output / "prompts" / "plan.json").exists()

    # No run config: the shard's run takes its job from the plan's recorded materialization.
    server.run_job(
        selector("batchgen_generate"),
        executionMetadata={"tags": [{"key": "dagster/partition", "value": "prompts/00000"}]},
    )
    manifest = json.loads((output / "prompts" / "shards" / "00000" / "manifest.json").read_text())
    assert manifest["num_rows"] == 2
    assert not (output / "prompts" / "shards" / "00001").exists()

    asset = server.graphql(SHARD_METADATA, partition="prompts/00000")["assetOrError"]
    [materialization] = asset["assetMaterializations"]
    numbers = {e["label"]: e.get("intValue") for e in materialization["metadataEntries"]}
    assert numbers["rows"] == 2 and numbers["rows_written"] == 2 and numbers["tokens_out"] > 0
