"""On the GPU: our bf16 logits match transformers' bf16 logits on the same random weights, for
prefill, for decode after chunked prefill (CUDA-graph decode steps) and after a prefix-cache hit."""

from __future__ import annotations

import pytest
import torch

from engine.config import (
    CacheConfig,
    EngineConfig,
    ModelConfig,
    SchedulerConfig,
    SpeculativeConfig,
)
from engine.factory import create_engine
from engine.kernel_set import kernels_for
from engine.loader import load_weights
from engine.models.llama import LlamaForCausalLM
from engine.output_processor import OutputProcessor
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.spec.ngram import NgramProposer

pytestmark = pytest.mark.gpu

REL_TOL = 3e-2  # bf16 end to end through 4 layers, relative to an fp32 run of the same weights


def _models():
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as HFLlama

    hf_cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=4,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        architectures=["LlamaForCausalLM"],
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 512,
        },
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf32 = HFLlama(hf_cfg).eval()
        hf = HFLlama(hf_cfg).eval()
    hf.load_state_dict(hf32.state_dict())
    hf = hf.to(torch.bfloat16)
    cfg = ModelConfig.from_hf_config(hf_cfg)
    ours = LlamaForCausalLM(
        cfg, kernels_for(torch.device("cuda")), torch.bfloat16, torch.device("cuda")
    )
    load_weights(ours, iter(hf.state_dict().items()))
    return cfg, (hf, hf32), ours


def _run(cfg, model, prompts, max_tokens, budget, overlap=False):
    """Run the engine; return per request the list of (token ids so far, logits row). The
    recording reads each step's inputs on the host, so steps run one at a time by default."""
    config = EngineConfig(
        model=cfg,
        cache=CacheConfig(block_size=16, num_blocks=512),
        scheduler=SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=64),
        dtype=torch.bfloat16,
        device="cuda",
        overlap_scheduling=overlap,
    )
    engine = create_engine(config, model, OutputProcessor(None), frozenset())
    seen: dict[int, list] = {}
    execute = engine.runner.execute

    def recording_execute(out, pending=None, **kwargs):
        logits = execute(out, pending, float_logits=True)  # compare fp32 logits
        sampled = [c.seq for c in out.chunks if c.sample]
        for seq, row in zip(sampled, logits, strict=True):
            seen.setdefault(seq.request.request_id, []).append(
                (list(seq.token_ids), row.float().cpu())
            )
        return logits

    engine.runner.execute = recording_execute
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    completions = []
    for i, p in enumerate(prompts):
        engine.add_request(Request(i, tuple(p), params, arrival_index=i))
    while engine.num_unfinished:
        completions += engine.step()
    return seen, completions, engine


def _check(hfs, seen):
    """transformers in bf16 rounds rope's cos/sin to bf16 and drifts from fp32 as positions
    grow; the engine keeps rope in fp32. So: ours must be within bf16 tolerance of the fp32
    run, and no further from transformers' bf16 logits than those are from fp32 plus that
    tolerance."""
    hf, hf32 = hfs
    for token_ids, ours in seen:
        ids = torch.tensor([token_ids], device="cuda")
        with torch.no_grad():
            ref16 = hf(ids).logits[0, -1].float().cpu()
            ref32 = hf32(ids).logits[0, -1].float().cpu()
        vs32 = float((ours - ref32).norm() / ref32.norm())
        vs16 = float((ours - ref16).norm() / ref16.norm())
        hf_drift = float((ref16 - ref32).norm() / ref32.norm())
        assert vs32 < REL_TOL, (len(token_ids), vs32)
        assert vs16 < hf_drift + REL_TOL, (len(token_ids), vs16, hf_drift)


def test_prefill_and_graph_decode_logits_match_transformers_after_chunked_prefill():
    cfg, hf, ours = _models()
    g = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(10, 32000, (n,), generator=g).tolist() for n in (1, 15, 16, 17, 200, 333)
    ]
    seen, completions, engine = _run(cfg, ours, prompts, max_tokens=6, budget=64)
    assert engine.runner.graphs is not None
    assert all(len(c.token_ids) == 6 for c in completions)
    _check(hf, [step for steps in seen.values() for step in steps])


def test_logits_match_transformers_after_a_prefix_cache_hit():
    cfg, hf, ours = _models()
    g = torch.Generator().manual_seed(2)
    prefix = torch.randint(10, 32000, (160,), generator=g).tolist()
    tails = [torch.randint(10, 32000, (n,), generator=g).tolist() for n in (5, 40)]
    seen, completions, engine = _run(cfg, ours, [prefix + tails[0]], max_tokens=2, budget=512)
    seen2_prompts = [prefix + t for t in tails]
    config_engine = engine
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    for i, p in enumerate(seen2_prompts):
        config_engine.add_request(Request(100 + i, tuple(p), params, arrival_index=i))
    while config_engine.num_unfinished:
        completions += config_engine.step()
    assert all(c.num_cached_tokens == 160 for c in completions if c.request_id >= 100)
    _check(hf, [step for steps in seen.values() for step in steps])


def test_shared_prefix_decode_logits_match_transformers_in_cuda_graphs():
    """Requests under two shared system prompts: decode steps read each prompt once per tile
    of sequences (graph replays with a shared-prefix plan) and still match transformers."""
    cfg, hf, ours = _models()
    g = torch.Generator().manual_seed(4)
    systems = [torch.randint(10, 32000, (300,), generator=g).tolist() for _ in range(2)]
    prompts = [
        systems[i % 2] + torch.randint(10, 32000, (1 + 7 * i,), generator=g).tolist()
        for i in range(12)
    ]
    seen, completions, engine = _run(cfg, ours, prompts, max_tokens=5, budget=4096)
    assert engine.metrics.num_shared_prefix_steps >= 3
    assert all(len(c.token_ids) == 5 for c in completions)
    _check(hf, [step for steps in seen.values() for step in steps])


def test_overlapped_scheduling_gives_the_same_tokens_in_cuda_graphs():
    """The default on CUDA: step N+1 launched before step N's tokens are read, its pending
    input tokens copied on the device. Same greedy tokens as one step at a time."""
    cfg, _, ours = _models()
    g = torch.Generator().manual_seed(5)
    system = torch.randint(10, 32000, (64,), generator=g).tolist()
    prompts = [
        system + torch.randint(10, 32000, (3 + 11 * i,), generator=g).tolist() for i in range(12)
    ]
    runs = {}
    for overlap in (False, True):
        seen, completions, engine = _run(cfg, ours, prompts, 12, budget=256, overlap=overlap)
        assert engine.overlap is overlap
        runs[overlap] = sorted((c.request_id, list(c.token_ids)) for c in completions)
    assert runs[True] == runs[False]
    assert all(len(t) == 12 for _, t in runs[True])


def test_speculative_verify_logits_match_transformers_in_cuda_graphs():
    cfg, hf, ours = _models()
    config = EngineConfig(
        model=cfg,
        cache=CacheConfig(block_size=16, num_blocks=512),
        scheduler=SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=16),
        # verify every step with drafts: random weights rarely accept them, and the worth-
        # verifying rule would otherwise skip them all
        speculative=SpeculativeConfig(
            num_speculative_tokens=3, prompt_lookup_min=1, verify_cost_ratio=1.0
        ),
        dtype=torch.bfloat16,
        device="cuda",
        overlap_scheduling=False,  # the recording reads every step's inputs on the host
    )
    engine = create_engine(
        config, ours, OutputProcessor(None), frozenset(), proposer=NgramProposer(1, 3)
    )
    graph_runs = []
    for graphs in engine.runner.graphs:
        original = graphs.run

        def counting_run(host, query_lens, *args, _run=original, _q=graphs.query_len):
            graph_runs.append(_q)
            return _run(host, query_lens, *args)

        graphs.run = counting_run
    seen = []
    execute = engine.runner.execute

    def recording_execute(out, **kwargs):
        logits = execute(out, float_logits=True)  # compare fp32 logits
        row = 0
        for chunk in out.chunks:
            if not chunk.sample:
                continue
            tokens = list(chunk.seq.token_ids) + list(chunk.draft_token_ids)
            for j in range(1 + len(chunk.draft_token_ids)):
                cut = len(tokens) - len(chunk.draft_token_ids) + j
                seen.append((tokens[:cut], logits[row].float().cpu()))
                row += 1
        return logits

    engine.runner.execute = recording_execute
    g = torch.Generator().manual_seed(3)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    for i in range(4):
        pattern = torch.randint(10, 32000, (6,), generator=g).tolist()
        engine.add_request(Request(i, tuple(pattern * 5), params, arrival_index=i))
    while engine.num_unfinished:
        engine.step()
    assert engine.metrics.num_spec_steps > 0
    assert 4 in graph_runs  # verify steps (k + 1 = 4 query tokens) replayed a graph
    _check(hf, seen)
