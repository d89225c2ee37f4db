"""On the GPU: the draft model's steps replay CUDA graphs (one draft token per step, and the
catch-up step after a verify), and speculative greedy outputs still equal plain decoding."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.engine import tiny_models as tm

pytestmark = pytest.mark.gpu


def test_draft_model_steps_replay_graphs_and_greedy_outputs_equal_plain_decoding(
    tmp_path,
) -> None:
    target, draft = tmp_path / "target", tmp_path / "draft"
    tm.make_tiny_model("qwen2", target, seed=0)
    tm.make_tiny_model("qwen2", draft, seed=1)
    prompts = [p * 3 for p in tm.random_prompts(6, 4, 10, seed=8)]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    plain = LLM(str(target), dtype="float32").generate(prompts, params, use_tqdm=False)
    # k = 5: four one-token draft steps queued back to back, so the decode family's two
    # staging sets are each reused within a proposal
    spec = {
        "method": "draft",
        "model": str(draft),
        "k": 5,
        "verify_cost_ratio": 1.0,
        "draft_cost_ratio": 0,
    }
    llm = LLM(str(target), dtype="float32", speculative=spec)
    runner = llm.engine.speculator.proposer.runner
    assert [g.query_len for g in runner.graphs] == [1, 6]
    replays = _count_replays(runner)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    assert llm.metrics.num_spec_steps > 0
    # draft steps ran as graphs; this draft agrees with the target on almost nothing, so its
    # catch-up after a verify is the one plain token (q = 1) and the q = 6 family stays idle
    assert 1 in replays
    torch.cuda.synchronize()


def _count_replays(runner) -> list[int]:
    """Wrap each graph family's run; the list collects the query_len of every replay."""
    replays: list[int] = []
    for graphs in runner.graphs:
        original = graphs.run

        def counting_run(*args, _run=original, _q=graphs.query_len, **kwargs):
            replays.append(_q)
            return _run(*args, **kwargs)

        graphs.run = counting_run
    return replays


def test_draft_graphs_queued_back_to_back_draft_the_targets_own_tokens(tmp_path) -> None:
    """With the target as its own draft every draft should be accepted: drafts computed from
    stale or overwritten staging (steps queued without a device read between them) would not
    be. fp32 kernels in graphs of different widths may still flip a rare near-tie."""
    target = tmp_path / "target"
    tm.make_tiny_model("qwen2", target, seed=0)
    prompts = tm.random_prompts(8, 4, 40, seed=9)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    spec = {
        "method": "draft",
        "model": str(target),
        "k": 6,
        "verify_cost_ratio": 1.0,
        "draft_cost_ratio": 0,
    }
    llm = LLM(str(target), dtype="float32", speculative=spec)
    runner = llm.engine.speculator.proposer.runner
    assert [g.query_len for g in runner.graphs] == [1, 7]
    replays = _count_replays(runner)
    llm.generate(prompts, params, use_tqdm=False)
    m = llm.metrics
    assert m.num_draft_tokens > 100
    assert m.num_accepted_tokens >= 0.95 * m.num_draft_tokens
    # accepted drafts leave the draft's cache behind by the last draft and the bonus token:
    # its catch-up steps (q = 2) replay the k + 1 family
    assert 7 in replays
