"""The KV budget on a GPU: gpu_memory_utilization is one engine's share of the card."""

import json

import pytest
import torch

from engine import LLM, SamplingParams
from engine.factory import kv_budget_bytes
from tests.engine import tiny_models as tm

GIB = 2**30


def test_a_lone_engine_gets_its_share_minus_weights_activations_and_other_processes():
    # 80 GiB card, 1 GiB held by another process / the context, 16 GiB weights, 3 GiB activations
    budget = kv_budget_bytes(
        total=80 * GIB,
        free=80 * GIB - 1 * GIB - 19 * GIB,  # reserved 19 GiB at the profile's peak
        reserved=19 * GIB,
        allocated=16 * GIB,
        peak=19 * GIB,
        baseline=0,
        utilization=0.9,
    )
    assert budget == int(0.9 * 80 * GIB - 16 * GIB - 3 * GIB - 1 * GIB)


def test_an_engine_built_after_another_is_not_charged_for_the_first_engines_memory():
    # the first engine holds 30 GiB (weights and cache); the second loads 3 GiB of weights
    first = 30 * GIB
    second = kv_budget_bytes(
        total=80 * GIB,
        free=80 * GIB - (first + 3 * GIB + 1 * GIB),
        reserved=first + 3 * GIB + 1 * GIB,
        allocated=first + 3 * GIB,
        peak=first + 4 * GIB,
        baseline=first,
        utilization=0.4,
    )
    assert second == int(0.4 * 80 * GIB - 3 * GIB - 1 * GIB)


def test_the_budget_never_exceeds_what_the_card_still_has_free():
    first = 60 * GIB
    second = kv_budget_bytes(
        total=80 * GIB,
        free=80 * GIB - (first + 4 * GIB),
        reserved=first + 4 * GIB,
        allocated=first + 3 * GIB,
        peak=first + 4 * GIB,
        baseline=first,
        utilization=0.9,
    )
    # its share would be 68 GiB, but only 16 GiB are free, and the activations need 1 of them
    assert second == 80 * GIB - (first + 4 * GIB) + 1 * GIB - 1 * GIB


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_engines_in_one_process_each_get_their_share(tmp_path) -> None:
    """Benchmarks hold several engines side by side (spec off / n-gram / draft): the second one
    used to be charged for the first one's cache and found no memory left."""
    tm.make_tiny_model("qwen2", tmp_path, seed=0)
    config = json.loads((tmp_path / "config.json").read_text())
    config["max_position_embeddings"] = 1 << 20  # so the cache fills the share, not a cap
    (tmp_path / "config.json").write_text(json.dumps(config))
    prompts = tm.random_prompts(4, 4, 10, seed=1)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    llms = [LLM(str(tmp_path), gpu_memory_utilization=0.4) for _ in range(2)]
    blocks = [llm.engine.kv_cache.num_blocks for llm in llms]
    assert abs(blocks[0] - blocks[1]) <= 0.02 * blocks[0]
    outs = [[o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)] for llm in llms]
    assert outs[0] == outs[1]
