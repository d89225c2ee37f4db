"""Micro-batched decode steps (LlamaForCausalLM.forward_micro_batches): two halves of a decode
step give the hidden states and KV writes of the whole step. On the CPU the halves run one after
the other; on CUDA (tests/engine/test_gpu_micro_batches.py) they interleave on two streams."""

import pytest
import torch

from engine import LLM, SamplingParams
from engine.model_runner import build_host_batch
from engine.request import Request
from tests.engine import tiny_models as tm


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    tm.make_tiny_model("qwen2", path, seed=3)
    return path


def _decode_step(llm: LLM, prompts: list[list[int]]):
    """Prefill every prompt, then schedule the step where all of them decode."""
    engine = llm.engine
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(Request(f"r{i}", tuple(p), params, arrival_index=i))
    while engine.scheduler.waiting or any(
        s.num_computed_tokens < s.num_tokens - 1 for s in engine.scheduler.running
    ):
        engine.step()
    out = engine.scheduler.schedule()
    assert len(out.chunks) == len(prompts) and all(c.num_tokens == 1 for c in out.chunks)
    runner = engine.runner
    return runner, runner.prepare(build_host_batch(out, runner.block_size))


@pytest.mark.parametrize("first", [1, 3, 6])
def test_two_micro_batches_give_the_whole_steps_hidden_states_and_kv(tiny_model, first) -> None:
    llm = LLM(str(tiny_model), dtype="float32", device="cpu", block_size=4, num_blocks=256)
    prompts = tm.random_prompts(7, 3, 30, seed=5)
    runner, batch = _decode_step(llm, prompts)
    before = [(kv.k_cache.clone(), kv.v_cache.clone()) for kv in runner.kv_caches]
    whole = runner.model(batch, runner.kv_caches)
    after_whole = [(kv.k_cache.clone(), kv.v_cache.clone()) for kv in runner.kv_caches]
    for kv, (k, v) in zip(runner.kv_caches, before, strict=True):
        kv.k_cache.copy_(k)
        kv.v_cache.copy_(v)
    halves = batch.split_decode(first)
    assert [h.context_lens.shape[0] for h in halves] == [first, len(prompts) - first]
    split = runner.model.forward_micro_batches(halves, runner.kv_caches, None)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    for kv, (k, v) in zip(runner.kv_caches, after_whole, strict=True):
        # the same slots written, with values equal up to matmul rounding (row subsets)
        torch.testing.assert_close(kv.k_cache, k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kv.v_cache, v, rtol=1e-5, atol=1e-5)


def test_split_decode_numbers_each_halfs_rows_from_zero(tiny_model) -> None:
    llm = LLM(str(tiny_model), dtype="float32", device="cpu", block_size=4, num_blocks=256)
    _, batch = _decode_step(llm, tm.random_prompts(5, 3, 12, seed=6))
    first, second = batch.split_decode(2)
    assert first.cu_query_lens.tolist() == [0, 1, 2]
    assert second.cu_query_lens.tolist() == [0, 1, 2, 3]
    assert second.logits_indices.tolist() == [0, 1, 2]
    assert torch.equal(second.block_tables, batch.block_tables[2:])
    assert torch.equal(second.context_lens, batch.context_lens[2:])


def test_split_host_batch_renumbers_the_second_parts_rows() -> None:
    from engine.model_runner import HostBatch

    host = HostBatch(
        input_ids=[5, 6, 7, 8, 9, 10],
        positions=[3, 8, 0, 1, 2, 4],
        slot_mapping=[3, 24, 32, 33, 34, 52],
        block_tables=[[0], [1, 2], [4], [6, 3]],
        cu_query_lens=[0, 1, 2, 5, 6],
        context_lens=[4, 9, 3, 5],
        logits_indices=[0, 1, 4, 5],
    )
    first, second = host.split(2)
    assert (first.input_ids, first.cu_query_lens, first.logits_indices) == (
        [5, 6],
        [0, 1, 2],
        [0, 1],
    )
    assert second.cu_query_lens == [0, 3, 4] and second.logits_indices == [2, 3]
    assert second.block_tables == [[4], [6, 3]] and second.context_lens == [3, 5]
    assert second.slot_mapping == [32, 33, 34, 52]


def test_mixed_steps_with_many_decodes_run_as_two_micro_batches_with_the_same_tokens(
    tiny_model, monkeypatch
) -> None:
    """70 sequences decode while later prompts prefill in the same steps: with micro-batch
    overlap on, those steps run decodes and prefill chunks as two micro-batches (in order on
    the CPU) and every greedy token is the one the whole step gives."""
    import engine.models.llama as llama

    prompts = tm.random_prompts(90, 3, 24, seed=12)
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    args = dict(dtype="float32", device="cpu", block_size=4, num_blocks=2048, max_num_seqs=96)
    whole = LLM(str(tiny_model), max_num_batched_tokens=160, **args)
    expected = [o.token_ids for o in whole.generate(prompts, params, use_tqdm=False)]
    calls = []
    original = llama.LlamaForCausalLM.forward_micro_batches

    def counting(self, batches, *rest):
        calls.append([b.context_lens.shape[0] for b in batches])
        return original(self, batches, *rest)

    monkeypatch.setattr(llama.LlamaForCausalLM, "forward_micro_batches", counting)
    split = LLM(str(tiny_model), max_num_batched_tokens=160, micro_batch_overlap=True, **args)
    got = [o.token_ids for o in split.generate(prompts, params, use_tqdm=False)]
    assert got == expected
    assert calls and all(decodes >= 64 and rest > 0 for decodes, rest in calls)
