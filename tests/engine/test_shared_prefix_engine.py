"""Shared-prefix attention inside the engine (Triton kernels under the CPU interpreter): decode
steps of requests that share a cached system prompt use it, and greedy outputs equal those of
plain paged attention."""

import pytest
import torch

from engine import LLM, SamplingParams
from tests.engine import tiny_models as tm


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3")
    tm.make_tiny_model("llama3", path, seed=0)
    return path


def shared_system_prompt_requests() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    systems = [torch.randint(10, 500, (41,), generator=g).tolist() for _ in range(2)]
    return [
        systems[i % 2] + torch.randint(10, 500, (3 + i,), generator=g).tolist() for i in range(8)
    ]


@pytest.mark.parametrize("overlap", [False, True], ids=["one_step_at_a_time", "overlapped"])
def test_greedy_outputs_equal_plain_attention_and_shared_prefix_steps_run(
    tiny_llama, monkeypatch, overlap
) -> None:
    monkeypatch.setenv("BATCHGEN_KERNELS", "triton")
    prompts = shared_system_prompt_requests()
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    args = dict(
        dtype="float32", device="cpu", block_size=4, num_blocks=128, overlap_scheduling=overlap
    )
    outputs = {}
    for on in (False, True):
        llm = LLM(str(tiny_llama), shared_prefix_attention=on, **args)
        outputs[on] = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        m = llm.metrics
        if on:
            # both system prompts (10 full blocks each) are read once per tile, not per request
            assert m.num_shared_prefix_steps >= 5
            assert m.num_shared_prefix_saved_tokens >= 5 * 2 * 3 * 40
        else:
            assert m.num_shared_prefix_steps == 0
    assert outputs[True] == outputs[False]
    assert all(len(t) == 6 for t in outputs[True])


def test_triton_kernels_give_the_reference_kernels_greedy_tokens_through_mixed_steps(
    tiny_llama, monkeypatch
) -> None:
    """Requests arrive while others decode, so steps mix decodes (first) with prefill chunks,
    and attention runs them in two launches (decode tiles, prefill tiles)."""
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(10, 500, (5 + 9 * i,), generator=g).tolist() for i in range(10)]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    outputs = {}
    for kernels in ("reference", "triton"):
        monkeypatch.setenv("BATCHGEN_KERNELS", kernels)
        llm = LLM(
            str(tiny_llama),
            dtype="float32",
            device="cpu",
            block_size=4,
            num_blocks=256,
            max_num_batched_tokens=24,
            max_num_seqs=6,
        )
        outputs[kernels] = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert outputs["triton"] == outputs["reference"]
