"""Speculative decoding on the real Qwen2.5-Coder 1.5B target / 0.5B draft pair (slow: about
9 GB of RAM and minutes on the CPU; run with `pytest -m slow`)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from engine import LLM, SamplingParams
from engine.model_assets import is_fetched, model_dir

pytestmark = pytest.mark.slow

TARGET = "qwen2.5-coder-1.5b"
DRAFT = "qwen2.5-coder-0.5b"

# Shared by every request: after the first request prefills it, its full blocks are cache hits.
SYSTEM = (
    "You are a careful programming assistant. Answer with short, correct code and at most "
    "one sentence of explanation. Use Python unless the user asks for another language."
)
USER_TURNS = (
    "Write a function that returns the squares of the even numbers in a list.",
    "Fix the bug:\n```python\ndef mean(xs):\n    return sum(xs) / len(xs) - 1\n```",
    "Explain in one sentence what a hash map is.",
    "Complete:\n```python\ndef is_prime(n: int) -> bool:\n```",
)
# Small enough to preempt: four sequences of ~60 prompt + 32 generated (+ up to 4 draft slots)
# tokens need ~50 blocks of 8 at once (less the shared system prompt's blocks): 28 preempt.
BLOCK_SIZE = 8
NUM_BLOCKS = 28
MAX_NUM_BATCHED_TOKENS = 48  # below the prompt length: prefill is chunked


def load(target: str, speculative: dict[str, Any] | None = None) -> LLM:
    return LLM(
        target,
        dtype="float32",
        block_size=BLOCK_SIZE,
        num_blocks=NUM_BLOCKS,
        max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
        speculative=speculative,
    )


@pytest.fixture(scope="module")
def qwen_pair():
    missing = [name for name in (TARGET, DRAFT) if not is_fetched(name)]
    if missing:
        pytest.skip(f"not fetched: {', '.join(missing)} (batchgen models fetch NAME)")
    return str(model_dir(TARGET)), str(model_dir(DRAFT))


def test_greedy_outputs_are_identical_with_the_qwen_draft_model_on_and_off(qwen_pair):
    target, draft = qwen_pair
    chats = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}] for u in USER_TURNS
    ]
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)

    reference_llm = load(target)
    reference = [c.token_ids for c in reference_llm.generate(chats, params, use_tqdm=False)]
    del reference_llm
    gc.collect()  # the 1.5B in fp32 is ~6 GB: never hold two

    llm = load(target, {"method": "draft", "model": draft, "k": 4, "draft_cost_ratio": 0.0})
    outs = llm.generate(chats, params, use_tqdm=False)

    assert [o.token_ids for o in outs] == reference
    m = llm.metrics
    longest_prompt = max(len(o.prompt_token_ids) for o in outs)
    assert longest_prompt > MAX_NUM_BATCHED_TOKENS  # prompts were chunked
    assert m.num_preemptions > 0
    assert m.num_cached_prompt_tokens > 0
    assert m.num_spec_steps > 0 and m.num_accepted_tokens > 0
    assert llm.engine.kv_cache.pool.num_used_blocks == 0
