"""On the GPU: micro-batch overlap (two streams) gives the tokens of whole steps, in decode
graphs and in eager mixed steps whose decodes run beside the prefill chunks."""

from __future__ import annotations

import pytest
import torch

import engine.models.llama as llama
from engine import LLM, SamplingParams
from tests.engine import tiny_models as tm

pytestmark = pytest.mark.gpu


def test_micro_batched_graphs_and_mixed_steps_give_the_same_greedy_tokens(
    tmp_path, monkeypatch
) -> None:
    tm.make_tiny_model("llama3", tmp_path, seed=2)
    prompts = tm.random_prompts(90, 3, 24, seed=12)
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    args = dict(dtype="float32", block_size=16, max_num_seqs=96, max_num_batched_tokens=160)
    whole = LLM(str(tmp_path), **args)
    expected = [o.token_ids for o in whole.generate(prompts, params, use_tqdm=False)]
    calls: list[bool] = []
    original = llama.LlamaForCausalLM.forward_micro_batches

    def counting(self, batches, kv_caches, side_stream):
        calls.append(torch.cuda.is_current_stream_capturing())
        assert side_stream is not None
        return original(self, batches, kv_caches, side_stream)

    monkeypatch.setattr(llama.LlamaForCausalLM, "forward_micro_batches", counting)
    split = LLM(str(tmp_path), micro_batch_overlap=True, **args)
    got = [o.token_ids for o in split.generate(prompts, params, use_tqdm=False)]
    assert got == expected
    assert any(calls) and not all(calls)  # captured into decode graphs, and eager mixed steps
