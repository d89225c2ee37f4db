"""Overlapped scheduling (step N+1 scheduled and launched before step N's tokens are read) must
give exactly what one-step-at-a-time gives: tokens, finish reasons, logprobs, seeded samples,
stop strings, and a KV pool that empties, with preemption and chunked prefill in the mix."""

from __future__ import annotations

import random

import pytest

from engine import LLM, SamplingParams
from engine.llm import GenerationRequest
from engine.request import PENDING_TOKEN
from tests.engine import tiny_models as tm


def run_both(path, prompts, params, **engine_args):
    results = {}
    for overlap in (False, True):
        llm = LLM(str(path), dtype="float32", overlap_scheduling=overlap, **engine_args)
        assert llm.engine.overlap is overlap
        outs = llm.generate(prompts, params, use_tqdm=False)
        m = llm.metrics
        assert m.num_generated_tokens == sum(len(o.token_ids) for o in outs)
        assert llm.engine.kv_cache.pool.num_used_blocks == 0
        assert all(PENDING_TOKEN not in o.token_ids for o in outs)
        results[overlap] = (outs, m)
    return results


def as_tuples(outs):
    return [
        (
            list(o.token_ids),
            o.text,
            o.finish_reason,
            [(lp.token_id, round(lp.logprob, 4)) for lp in (o.logprobs or [])],
        )
        for o in outs
    ]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3_overlap")
    tm.make_tiny_model("llama3", path, seed=3)
    return path


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"max_num_batched_tokens": 8},  # chunked prefill
        {"num_blocks": 20, "block_size": 4, "max_num_batched_tokens": 16},  # preemption
    ],
    ids=["default", "chunked_prefill", "preempting"],
)
def test_tiny_model_outputs_are_identical_with_overlap(tiny_llama, variant) -> None:
    prompts = tm.random_prompts(7, 1, 40, seed=4)
    prompts += [prompts[0] + p for p in prompts[1:3]]  # shared prefixes: prefix-cache hits
    params = [
        SamplingParams(max_tokens=1 + 5 * i, temperature=0, ignore_eos=True)
        for i in range(len(prompts))
    ]
    results = run_both(tiny_llama, prompts, params, **variant)
    assert as_tuples(results[True][0]) == as_tuples(results[False][0])
    if "num_blocks" in variant:
        assert results[True][1].num_preemptions > 0


def test_seeded_sampling_and_logprobs_are_identical_with_overlap(tiny_llama) -> None:
    prompts = tm.random_prompts(5, 3, 20, seed=5)
    params = [
        SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=11 + i, logprobs=2)
        for i in range(len(prompts))
    ]
    results = run_both(tiny_llama, prompts, params)
    assert as_tuples(results[True][0]) == as_tuples(results[False][0])


def test_smollm2_eos_and_stop_strings_are_identical_with_overlap(smollm2_dir) -> None:
    """Answers that end at EOS at different steps, one cut by a stop string and one by a
    stop token: their spare rows in the step after the stop are dropped."""
    chats = [
        [{"role": "user", "content": q}]
        for q in (
            "Say hi.",
            "What is 2 + 2? Answer with a number only.",
            "Name three colors.",
            "Write one sentence about the sea.",
            "Count from 1 to 10.",
        )
    ]
    params = [
        SamplingParams(max_tokens=48, temperature=0),
        SamplingParams(max_tokens=48, temperature=0),
        SamplingParams(max_tokens=48, temperature=0, stop=[","]),
        SamplingParams(max_tokens=7, temperature=0),
        SamplingParams(max_tokens=48, temperature=0, stop_token_ids=[28]),  # "5" in SmolLM2
    ]
    results = run_both(smollm2_dir, chats, params)
    overlapped, plain = as_tuples(results[True][0]), as_tuples(results[False][0])
    assert overlapped == plain
    reasons = [o[2].value for o in plain]
    assert "stop" in reasons and "length" in reasons


def test_closing_a_stream_early_leaves_nothing_pending(tiny_llama) -> None:
    llm = LLM(str(tiny_llama), dtype="float32", overlap_scheduling=True)
    prompts = tm.random_prompts(12, 3, 20, seed=6)
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    stream = llm.stream(
        (GenerationRequest(prompt_token_ids=p, sampling_params=params) for p in prompts),
        max_pending=4,
    )
    next(stream)
    stream.close()
    assert llm.engine.num_unfinished == 0
    assert llm.engine.kv_cache.pool.num_used_blocks == 0
    # the engine still works afterwards
    outs = llm.generate(prompts[:2], params, use_tqdm=False)
    assert all(len(o.token_ids) == 30 for o in outs)


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculation_switching_on_and_off_with_overlap_gives_identical_outputs(
    tmp_path_factory, method
) -> None:
    """Speculation off while more than 2 sequences decode (those steps overlap), on once the
    batch drains (the in-flight step is read first, then drafts are proposed and verified)."""
    target = tmp_path_factory.mktemp("overlap_target")
    draft = tmp_path_factory.mktemp("overlap_draft")
    tm.make_tiny_model("qwen2", target, seed=0)
    tm.make_tiny_model("qwen2", draft, seed=1)
    prompts = [p * 3 for p in tm.random_prompts(12, 4, 10, seed=7)]  # repetitive: n-gram hits
    params = [
        SamplingParams(max_tokens=4 + 5 * (i % 6), temperature=0, ignore_eos=True)
        for i in range(len(prompts))
    ]
    spec = {"method": method, "k": 3, "prompt_lookup_min": 1, "max_batch_size": 2}
    if method == "draft":
        spec["model"] = str(draft)
        spec["draft_cost_ratio"] = 0.0  # speculate whenever the batch allows
    # at most 3 running: speculation turns on when one finishes (2 decoding) and off again when
    # the next is admitted, so sequences with proposer state also finish in overlapped steps
    args = dict(dtype="float32", max_num_seqs=3)
    plain = LLM(str(target), **args).generate(prompts, params, use_tqdm=False)
    llm = LLM(str(target), speculative=spec, overlap_scheduling=True, **args)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    m = llm.metrics
    assert m.num_spec_off_steps > 0 and m.num_spec_steps > 0
    assert m.num_generated_tokens == sum(len(o.token_ids) for o in outs)
    assert llm.engine.kv_cache.pool.num_used_blocks == 0
    proposer = llm.engine.speculator.proposer
    kept = proposer._indexes if method == "ngram" else proposer.states
    assert not kept, "the proposer still holds state of finished sequences"
    if method == "draft":
        assert proposer.kv_cache.pool.num_used_blocks == 0


@pytest.mark.parametrize("trial", range(12))
def test_random_mixes_of_requests_give_identical_outputs_with_overlap(tiny_llama, trial) -> None:
    """Seeded random batches: lengths, shared prefixes, stop tokens that fire at random steps,
    seeded sampling, logprobs, small caches (preemption) and token budgets (chunking)."""
    rng = random.Random(trial)
    n = rng.randint(3, 20)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(1, 60))] for _ in range(n)]
    if rng.random() < 0.5:
        prompts = [prompts[0] + p if rng.random() < 0.5 else p for p in prompts]
    params = []
    for _ in range(n):
        kw: dict = {"max_tokens": rng.randint(1, 30), "ignore_eos": rng.random() < 0.5}
        if rng.random() < 0.4:
            kw["stop_token_ids"] = [rng.randrange(3, 500) for _ in range(40)]
        if rng.random() < 0.3:
            kw.update(temperature=1.0, seed=rng.randint(0, 99))
        else:
            kw["temperature"] = 0
        if rng.random() < 0.2:
            kw["logprobs"] = 1
        params.append(SamplingParams(**kw))
    args = {
        "block_size": 4,
        "num_blocks": rng.choice([24, 40, 200]),
        "max_num_batched_tokens": rng.choice([8, 16, 64]),
        "max_num_seqs": rng.choice([2, 4, 16]),
    }
    results = run_both(tiny_llama, prompts, params, **args)
    assert as_tuples(results[True][0]) == as_tuples(results[False][0])
