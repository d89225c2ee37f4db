"""Speculative decoding: proposers, the rejection sampler's distribution, and greedy outputs
identical with speculation on and off (with chunked prefill, prefix hits and preemption)."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import SpeculativeConfig, SpeculativeMethod
from engine.kv_cache_manager import KVCacheManager
from engine.metrics import RunMetrics
from engine.request import Request, Sequence
from engine.scheduler import ScheduledChunk
from engine.spec.decoder import PROBE_INTERVAL, SpeculativeDecoder
from engine.spec.ngram import NgramProposer
from engine.spec.rejection_sampler import RejectionSampler
from tests.engine import tiny_models as tm

CHI2_CRITICAL_DF4 = 18.47  # p = 0.001


def seq_of(tokens, params=None, request_id=0):
    return Sequence.from_request(Request(request_id, tuple(tokens), params or SamplingParams()))


def test_ngram_proposes_the_continuation_of_the_latest_earlier_occurrence():
    proposer = NgramProposer(min_n=2, max_n=3)
    seq = seq_of([1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3])
    assert proposer.propose([seq], [3]).token_ids == [[7, 8, 5]]


def test_ngram_prefers_the_longest_match_and_proposes_nothing_without_one():
    proposer = NgramProposer(min_n=1, max_n=3)
    seq = seq_of(
        [4, 2, 3, 6, 1, 2, 3, 5, 2, 3]
    )  # "2 3" occurs at 1 and 5; "1 2 3" never ends the seq
    assert proposer.propose([seq], [2]).token_ids == [[5, 2]]
    assert NgramProposer(2, 3).propose([seq_of([1, 2, 3, 4])], [4]).token_ids == [[]]


def test_ngram_follows_the_occurrence_nearest_to_where_the_copy_left_off():
    """Copying 1 2 3 4 5 6 7 8 from the source: after a divergence (50 instead of 4) the tail
    "5" occurs twice; the copy resumes at the source's 5, not at the later one in 9 5 11."""
    proposer = NgramProposer(min_n=1, max_n=2)
    source = [1, 2, 3, 4, 5, 6, 7, 8, 9, 5, 11, 12]
    seq = seq_of([*source, 0, 1, 2])
    assert proposer.propose([seq], [2]).token_ids == [[3, 4]]  # "1 2" -> the source
    seq.token_ids += [3, 50, 5]  # the copy diverged at 4
    assert proposer.propose([seq], [3]).token_ids == [[6, 7, 8]]
    fresh = seq_of(list(seq.token_ids))  # no followed match yet: the latest occurrence
    assert NgramProposer(min_n=1, max_n=2).propose([fresh], [2]).token_ids == [[11, 12]]


def _verify_one(decoder, seq, drafts, target_token_ids):
    """Verify drafts for seq against a target whose argmax rows are target_token_ids."""
    seq.num_computed_tokens = seq.num_tokens - 1
    chunk = ScheduledChunk(seq, seq.num_tokens - 1, 1 + len(drafts), tuple(drafts))
    rows = torch.full((len(target_token_ids), 600), -1.0)
    rows[torch.arange(len(target_token_ids)), torch.tensor(target_token_ids)] = 1.0
    tokens = decoder.verify([chunk], [rows])[0]
    seq.token_ids += tokens
    return tokens


def test_adaptive_draft_length_shrinks_after_a_rejection_and_doubles_after_full_acceptance():
    config = SpeculativeConfig(num_speculative_tokens=8, adaptive_draft_length=True)
    decoder = SpeculativeDecoder(config, NgramProposer(1, 2), torch.Generator(), 4096, RunMetrics())
    seq = seq_of([1, 2, 3], SamplingParams(temperature=0, max_tokens=100))
    assert decoder._budget(seq) == 8
    assert _verify_one(decoder, seq, [4, 5, 6, 7], [4, 5, 9, 0, 0]) == [4, 5, 9]
    assert seq.max_draft_tokens == 3 and decoder._budget(seq) == 3  # 2 accepted + 1
    assert _verify_one(decoder, seq, [10, 11, 12], [10, 11, 12, 13]) == [10, 11, 12, 13]
    assert decoder._budget(seq) == 6
    assert _verify_one(decoder, seq, [14], [14, 15]) == [14, 15]  # a short draft, all taken
    assert decoder._budget(seq) == 8  # doubled, capped at num_speculative_tokens
    assert _verify_one(decoder, seq, [20, 21], [30, 0, 0]) == [30]
    assert decoder._budget(seq) == 1
    fixed = SpeculativeDecoder(
        SpeculativeConfig(num_speculative_tokens=8),
        NgramProposer(1, 2),
        torch.Generator(),
        4096,
        RunMetrics(),
    )
    other = seq_of([1, 2, 3], SamplingParams(temperature=0, max_tokens=100))
    _verify_one(fixed, other, [4, 5, 6, 7], [9, 0, 0, 0, 0])
    assert fixed._budget(other) == 8  # off: the config's k whatever the acceptance


def test_trim_frees_blocks_left_empty_by_rejected_drafts():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    seq = seq_of(range(6))
    assert kv.allocate_slots(seq, 10)  # 6 real + 4 drafts: 3 blocks
    assert seq.block_ids == [0, 1, 2]
    kv.trim(seq, 7)
    assert seq.block_ids == [0, 1]
    assert kv.pool.free_block_ids()[-1] == 2


def _chi2(counts, expected):
    support = expected > 0
    assert torch.all(counts[~support] == 0)
    return float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())


@pytest.mark.parametrize("draft_kind", ["sampled_from_draft", "one_hot"])
def test_rejection_sampler_output_follows_the_target_distribution(draft_kind):
    """First emitted token ~ target_probs[0] and, given a first accepted draft, the second
    ~ target_probs[1], whatever the draft distribution."""
    torch.manual_seed(0)
    vocab, num = 5, 40000
    target_logits = torch.tensor(
        [[1.0, 0.2, -0.5, 0.7, 0.0], [0.1, 1.5, 0.3, -1.0, 0.4], [0.0] * 5]
    )
    target_probs = target_logits.softmax(-1)
    draft_probs = torch.tensor([[0.05, 0.6, 0.05, 0.1, 0.2], [0.3, 0.1, 0.4, 0.1, 0.1]])
    if draft_kind == "one_hot":
        drafts = torch.tensor([[3, 1]]).repeat(num, 1)
        probs_arg = None
    else:
        drafts = torch.stack(
            [torch.multinomial(draft_probs[i], num, replacement=True) for i in range(2)], 1
        )
        probs_arg = draft_probs.unsqueeze(0).repeat(num, 1, 1)
    params = SamplingParams(temperature=1.0)
    seqs = [seq_of([1], params, i) for i in range(num)]
    sampler = RejectionSampler(torch.Generator().manual_seed(1))
    out = sampler(target_logits.unsqueeze(0).repeat(num, 1, 1), drafts.tolist(), seqs, probs_arg)
    first = torch.tensor([t[0] for t in out.token_ids])
    counts = torch.bincount(first, minlength=vocab).double()
    assert _chi2(counts, target_probs[0].double() * num) < CHI2_CRITICAL_DF4
    second = torch.tensor(
        [t[1] for t, a in zip(out.token_ids, out.num_accepted, strict=True) if a >= 1]
    )
    counts2 = torch.bincount(second, minlength=vocab).double()
    assert _chi2(counts2, target_probs[1].double() * len(second)) < CHI2_CRITICAL_DF4


def test_greedy_rejection_accepts_exactly_the_target_argmax():
    logits = torch.tensor([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])
    sampler = RejectionSampler(torch.Generator().manual_seed(0))
    seq = seq_of([1], SamplingParams(temperature=0))
    assert sampler(logits, [[1, 0]], [seq]).token_ids == [[1, 0, 2]]  # both accepted + bonus
    assert sampler(logits, [[1, 2]], [seq]).token_ids == [[1, 0]]  # second rejected, recovered
    assert sampler(logits, [[2, 0]], [seq]).token_ids == [[1]]


def test_host_greedy_verification_equals_the_rejection_samplers_greedy_rows():
    """verify_greedy (argmax tokens already on the host) against verify (logits through the
    rejection sampler): same tokens, same per-sequence acceptance and run counters, over random
    drafts that agree with the target for a random stretch."""
    g = torch.Generator().manual_seed(11)
    config = SpeculativeConfig(num_speculative_tokens=6, adaptive_draft_length=True)
    decoders = [
        SpeculativeDecoder(config, NgramProposer(1, 2), torch.Generator(), 4096, RunMetrics())
        for _ in range(2)
    ]
    params = SamplingParams(temperature=0, max_tokens=100)
    seqs = [[seq_of([1, 2, 3], params, request_id=i) for i in range(5)] for _ in range(2)]
    for _ in range(30):
        chunks: list[list[ScheduledChunk]] = [[], []]
        rows, argmax_rows = [], []
        for i in range(5):
            k = int(torch.randint(1, 7, (1,), generator=g))
            logits = torch.randn(k + 1, 50, generator=g)
            argmax = logits.argmax(dim=-1).tolist()
            agree = int(torch.randint(0, k + 1, (1,), generator=g))
            drafts = argmax[:agree] + torch.randint(0, 50, (k - agree,), generator=g).tolist()
            for copy in range(2):
                seq = seqs[copy][i]
                seq.num_computed_tokens = seq.num_tokens - 1
                chunks[copy].append(ScheduledChunk(seq, seq.num_tokens - 1, 1 + k, tuple(drafts)))
            rows.append(logits)
            argmax_rows.append(argmax)
        on_device = decoders[0].verify(chunks[0], rows)
        on_host = decoders[1].verify_greedy(chunks[1], argmax_rows)
        assert on_host == on_device
        for copy, tokens in ((0, on_device), (1, on_host)):
            for seq, t in zip(seqs[copy], tokens, strict=True):
                seq.token_ids += t
    for a, b in zip(seqs[0], seqs[1], strict=True):
        assert (a.num_proposed_drafts, a.num_accepted_drafts, a.max_draft_tokens) == (
            b.num_proposed_drafts,
            b.num_accepted_drafts,
            b.max_draft_tokens,
        )
    first, second = (d.metrics.as_dict() for d in decoders)
    for key in ("num_spec_steps", "num_draft_tokens", "num_accepted_tokens"):
        assert first[key] == second[key]
    assert 0 < first["num_accepted_tokens"] < first["num_draft_tokens"]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    target = tmp_path_factory.mktemp("target")
    draft = tmp_path_factory.mktemp("draft")
    tm.make_tiny_model("qwen2", target, seed=0)
    tm.make_tiny_model("qwen2", draft, seed=1)
    return target, draft


def copy_heavy_prompts():
    g = torch.Generator().manual_seed(5)
    prefix = torch.randint(10, 500, (16,), generator=g).tolist()  # shared: prefix-cache hits
    prompts = []
    for n in (8, 12, 20, 5, 16, 9):
        body = torch.randint(10, 500, (n,), generator=g).tolist()
        prompts.append(prefix + body * 3)
    return prompts


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_greedy_outputs_are_identical_with_speculation_on_and_off(tiny_pair, method):
    target, draft = tiny_pair
    prompts = copy_heavy_prompts()
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    engine_args = dict(dtype="float32", block_size=4, num_blocks=44, max_num_batched_tokens=24)
    reference = LLM(str(target), **engine_args).generate(prompts, params, use_tqdm=False)
    spec = (
        {"method": method, "k": 3, "model": str(draft), "draft_cost_ratio": 0.0}
        if method == "draft"
        else {"method": "ngram", "k": 4, "prompt_lookup_min": 1}
    )
    llm = LLM(str(target), speculative=spec, **engine_args)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    m = llm.metrics
    assert m.num_spec_steps > 0 and m.num_draft_tokens > 0
    assert m.num_preemptions > 0 and m.num_cached_prompt_tokens > 0
    assert m.num_steps > len(prompts[0]) // 24  # prompts were chunked
    assert llm.engine.kv_cache.pool.num_used_blocks == 0


def test_adaptive_switch_turns_speculation_off_for_large_batches(tiny_pair):
    target, _ = tiny_pair
    prompts = copy_heavy_prompts()
    llm = LLM(
        str(target),
        dtype="float32",
        speculative=SpeculativeConfig(num_speculative_tokens=3, max_batch_size=2),
    )
    llm.generate(
        prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), use_tqdm=False
    )
    m = llm.metrics
    assert m.num_spec_off_steps > 0  # six sequences decoding: off
    assert m.num_spec_steps == 0


def test_seeded_sampling_with_speculation_is_reproducible(tiny_pair):
    target, draft = tiny_pair
    llm = LLM(
        str(target),
        dtype="float32",
        speculative={"method": "draft", "model": str(draft), "k": 3, "draft_cost_ratio": 0.0},
    )
    params = SamplingParams(max_tokens=16, temperature=0.9, seed=11, ignore_eos=True)
    first = llm.generate(copy_heavy_prompts(), params, use_tqdm=False)
    second = llm.generate(copy_heavy_prompts(), params, use_tqdm=False)
    assert [o.token_ids for o in first] == [o.token_ids for o in second]
    assert all(len(o.token_ids) == 16 for o in first)


def test_greedy_smollm2_is_identical_with_ngram_speculation(smollm2_dir):
    text = (
        "Fix the typos: The quick brwon fox jumpd over the lazzy dog, and the dog barkd at the "
        "fox all nigth long."
    )
    prompts = [[{"role": "user", "content": text}], "Repeat exactly: " + text]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    reference = LLM(str(smollm2_dir), dtype="float32").generate(prompts, params, use_tqdm=False)
    llm = LLM(str(smollm2_dir), dtype="float32", speculative={"method": "ngram", "k": 4})
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    assert llm.metrics.num_accepted_tokens > 0


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "ngram", "k": 8, "prompt_lookup_min": 1},
        {"method": "ngram", "k": 8, "prompt_lookup_min": 1, "adaptive_draft_length": True},
    ],
    ids=["k8", "k8_adaptive"],
)
def test_greedy_smollm2_is_identical_with_long_and_adaptive_ngram_drafts(smollm2_dir, spec):
    text = (
        "Copy out every sentence, word for word: The river rises in the mountains to the north. "
        "It flows south through a narrow valley of pine forests. Thereit slows and widens."
    )
    prompts = [[{"role": "user", "content": text}], "Fix the typos: the quick brwon fox jumpd."]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    reference = LLM(str(smollm2_dir), dtype="float32").generate(prompts, params, use_tqdm=False)
    llm = LLM(str(smollm2_dir), dtype="float32", speculative=spec)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    m = llm.metrics
    assert m.num_accepted_tokens > 0
    assert m.num_accepted_tokens < m.num_draft_tokens  # some drafts were rejected


def test_drafts_are_skipped_when_their_expected_tokens_cannot_pay_for_a_verify_step(tiny_pair):
    target, _ = tiny_pair
    prompts = copy_heavy_prompts()
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    reference = LLM(str(target), dtype="float32").generate(prompts, params, use_tqdm=False)
    costly = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1, verify_cost_ratio=6.0)
    llm = LLM(str(target), dtype="float32", speculative=costly)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    assert llm.metrics.num_spec_skipped_steps > 0
    assert llm.metrics.num_spec_steps == 0  # at most 4 expected tokens per sequence < 5 needed


def test_a_costly_draft_that_is_rarely_accepted_sits_out_and_probes_again(tiny_pair):
    """A draft step costing half a target step pays only with high acceptance: this draft (other
    weights) is almost never accepted, so after its first proposal the target decodes plainly,
    probing again after PROBE_INTERVAL steps (then twice that), with plain decoding's tokens."""
    target, draft = tiny_pair
    prompts = copy_heavy_prompts()[:1]
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    reference = LLM(str(target), dtype="float32").generate(prompts, params, use_tqdm=False)
    spec = {"method": "draft", "model": str(draft), "k": 4, "draft_cost_ratio": 0.5}
    llm = LLM(str(target), dtype="float32", speculative=spec)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    m = llm.metrics
    assert 1 <= m.num_spec_steps <= 1 + 60 // PROBE_INTERVAL
    assert m.num_spec_off_steps >= 2 * PROBE_INTERVAL
    # each probe that did not pay doubled the wait before the next
    assert llm.engine.speculator._probe_interval >= 2 * PROBE_INTERVAL


def test_a_costly_draft_that_is_accepted_drafts_on_every_step(tiny_pair):
    target, _ = tiny_pair
    prompts = copy_heavy_prompts()[:2]
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    spec = {"method": "draft", "model": str(target), "k": 4, "draft_cost_ratio": 0.5}
    llm = LLM(str(target), dtype="float32", speculative=spec)
    llm.generate(prompts, params, use_tqdm=False)
    m = llm.metrics
    assert m.num_spec_steps > 0 and m.num_spec_off_steps == 0
    assert m.num_accepted_tokens == m.num_draft_tokens


def test_draft_cost_estimate_weighs_weight_bytes_and_layers_equally():
    from engine.config import ModelConfig
    from engine.spec.draft_model import estimate_draft_cost

    def shape(hidden, inter, layers, heads, kv, head_dim):
        return ModelConfig(
            "Qwen2ForCausalLM", 151936, hidden, inter, layers, heads, kv, head_dim, 32768
        )

    qwen_05b = shape(896, 4864, 24, 14, 2, 64)
    qwen_15b = shape(1536, 8960, 28, 12, 2, 128)
    assert estimate_draft_cost(qwen_15b, qwen_15b) == pytest.approx(1.0)
    assert estimate_draft_cost(qwen_05b, qwen_15b) == pytest.approx(0.59, abs=0.01)


def test_draft_model_catches_up_after_steps_that_skipped_its_drafts(tiny_pair):
    """With drafts never worth verifying, the target decodes plainly while the draft's cache
    already holds its own first draft; when that equals the target's token (same weights here)
    the draft has nothing new but its last token to run."""
    target, _ = tiny_pair
    prompts = copy_heavy_prompts()
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    reference = LLM(str(target), dtype="float32").generate(prompts, params, use_tqdm=False)
    spec = SpeculativeConfig(
        method=SpeculativeMethod.DRAFT,
        draft_model=str(target),
        verify_cost_ratio=6.0,
        draft_cost_ratio=0.0,
    )
    llm = LLM(str(target), dtype="float32", speculative=spec)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    assert llm.metrics.num_spec_skipped_steps > 0


def test_generated_token_count_equals_the_tokens_completions_hold(tiny_pair):
    target, _ = tiny_pair
    llm = LLM(
        str(target),
        dtype="float32",
        speculative={"method": "draft", "model": str(target), "k": 4, "draft_cost_ratio": 0.0},
    )
    stops = SamplingParams(max_tokens=20, temperature=0, stop_token_ids=tuple(range(10, 500, 3)))
    outs = llm.generate(copy_heavy_prompts(), stops, use_tqdm=False)
    assert llm.metrics.num_accepted_tokens > 0
    assert llm.metrics.num_generated_tokens == sum(len(o.token_ids) for o in outs)


def test_draft_steps_after_the_first_take_their_input_token_on_the_device(tiny_pair):
    """A proposal of k drafts runs k draft steps; every step after the first gets its input
    token from the step before without the host reading it (PendingInputs), so the drafts
    equal the target's own greedy tokens (draft = target) and every draft is accepted."""
    target, _ = tiny_pair
    spec = {
        "method": "draft",
        "model": str(target),
        "k": 3,
        "verify_cost_ratio": 1.0,
        "draft_cost_ratio": 0.0,
    }
    llm = LLM(str(target), dtype="float32", speculative=spec)
    runner = llm.engine.speculator.proposer.runner
    calls: list[bool] = []
    execute = runner.execute

    def recording(out, pending=None, **kwargs):
        calls.append(pending is not None)
        return execute(out, pending, **kwargs)

    runner.execute = recording
    prompts = copy_heavy_prompts()[:3]
    params = SamplingParams(max_tokens=13, temperature=0, ignore_eos=True)
    reference = LLM(str(target), dtype="float32").generate(prompts, params, use_tqdm=False)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    m = llm.metrics
    assert m.num_spec_steps > 0 and m.num_accepted_tokens == m.num_draft_tokens
    # per proposal: one catch-up step, then k - 1 steps fed on the device
    assert calls.count(True) == 2 * calls.count(False)
