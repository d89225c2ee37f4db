"""Shared test setup. TRITON_INTERPRET must be set before any @triton.jit function is defined,
so it is set here, at import time, whenever no GPU is present."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The converted SmolLM2-135M-Instruct folder (`batchgen models fetch smollm2`), or skip."""
    from engine.model_assets import is_fetched, model_dir

    if not is_fetched("smollm2"):
        pytest.skip("SmolLM2 is not fetched; run `batchgen models fetch smollm2`")
    return model_dir("smollm2")
