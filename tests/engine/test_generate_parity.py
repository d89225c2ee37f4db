"""Greedy outputs must be token-identical to transformers generate (fp32, CPU, same weights)."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.engine import tiny_models as tm

GREEDY_24 = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)

ENGINE_VARIANTS = {
    "default": {},
    "chunked_prefill": {"max_num_batched_tokens": 8},
    "preempting": {"num_blocks": 20, "block_size": 4, "max_num_batched_tokens": 16},
}


@pytest.fixture(scope="module", params=tm.ARCHITECTURES)
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = tm.make_tiny_model(request.param, path)
    prompts = tm.random_prompts(6, 1, 40, seed=1)
    refs = [tm.hf_greedy(hf, p, GREEDY_24.max_tokens) for p in prompts]
    return path, prompts, refs


@pytest.mark.parametrize("variant", ENGINE_VARIANTS)
def test_greedy_matches_transformers_on_tiny_models(tiny, variant):
    path, prompts, refs = tiny
    llm = LLM(str(path), dtype="float32", **ENGINE_VARIANTS[variant])
    outs = llm.generate(prompts, GREEDY_24, use_tqdm=False)
    assert [list(o.token_ids) for o in outs] == refs
    if variant == "preempting":
        assert llm.metrics.num_preemptions > 0
    if variant == "chunked_prefill":
        assert llm.metrics.num_steps > GREEDY_24.max_tokens + max(map(len, prompts)) // 8


SMOL_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "List three benefits of regular exercise:",
    "Translate to French: Good morning, how are you?",
    "The mitochondria is",
    "Write a haiku about autumn leaves.",
    "import numpy as np\n\n# compute the mean of an array\n",
    "Q: What is 12 times 7?\nA:",
    "The quick brown fox",
    "Explain photosynthesis in one sentence.",
    "SELECT name, age FROM users WHERE",
    "My favourite book is",
    "In 1969, the first humans",
    "Dear hiring manager,",
    "The three primary colors are",
    "Summarize: The meeting was moved from Tuesday to Thursday because the projector broke.",
    "Water boils at",
    "A good name for a pet turtle is",
    "Here is a recipe for pancakes:",
]
SMOL_CHATS = [
    [{"role": "user", "content": "What is the tallest mountain on Earth?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Give me a synonym for happy."},
    ],
]


def test_greedy_matches_transformers_on_smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM

    llm = LLM(str(smollm2_dir), dtype="float32")
    params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    outs = llm.generate(SMOL_PROMPTS + SMOL_CHATS, params, use_tqdm=False)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    assert len(outs) == 22
    for out in outs:
        ref = tm.hf_greedy(hf, list(out.prompt_token_ids), 64)
        assert list(out.token_ids) == ref, out.index
    assert llm.metrics.num_generated_tokens == 22 * 64
