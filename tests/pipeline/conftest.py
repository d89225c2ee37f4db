"""Fixtures for pipeline tests: a small-footprint SmolLM2 engine per module and job configs
over tiny datasets. On CPU every engine step costs ~0.1 s, so datasets stay small and
max_tokens tiny."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import LLM
from pipeline.config import JobConfig, merge_config_dicts
from tests.s3_server import CephS3Server, missing_binaries

ENGINE_OPTIONS = {"num_blocks": 384, "max_num_seqs": 32, "max_num_batched_tokens": 1024}


def make_llm(model_dir: Path) -> LLM:
    return LLM(model_dir, **ENGINE_OPTIONS)


@pytest.fixture(scope="module")
def llm(smollm2_dir: Path) -> LLM:
    """One engine per test module; tests compare metric deltas, never absolute values."""
    return make_llm(smollm2_dir)


@pytest.fixture
def job_config(smollm2_dir: Path) -> Callable[..., JobConfig]:
    """job_config(input_url, output_url, **sections) -> a JobConfig on SmolLM2 with greedy
    sampling, max_tokens 2 and the test engine options; sections merge over those defaults."""

    def build(input_url: str, output_url: str, **sections: Any) -> JobConfig:
        base = {
            "model": str(smollm2_dir),
            "input": {"url": input_url},
            "output": {"url": output_url},
            "sampling": {"max_tokens": 2, "temperature": 0.0},
            "engine": dict(ENGINE_OPTIONS),
        }
        return JobConfig.from_dict(merge_config_dicts(base, sections))

    return build


@pytest.fixture(scope="session")
def ceph_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephS3Server]:
    """A real S3 server (Ceph RADOS Gateway on 127.0.0.1, tests/s3_server.py) for the session;
    ~15 s to start. Without the Ceph binaries: a failure under CI=true (.ci/setup.sh installs
    them), a skip elsewhere. Credentials are the server's `env()`; tests set them themselves."""
    missing = missing_binaries()
    if missing:
        message = f"Ceph is not installed ({', '.join(missing)} not found); see .ci/setup.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with CephS3Server(tmp_path_factory.mktemp("ceph")) as server:
        yield server
