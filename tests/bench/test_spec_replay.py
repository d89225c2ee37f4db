"""bench/spec_replay.py against the engine it drives: a replay of a tiny model's greedy outputs
with n-gram speculation emits exactly those outputs, and its step counts equal a real run's."""

from bench.spec_replay import Oracle, replay
from engine import LLM, SamplingParams
from engine.config import SpeculativeConfig
from tests.engine import tiny_models as tm


def test_replay_emits_the_oracle_and_counts_the_real_engines_steps(tmp_path) -> None:
    tm.make_tiny_model("llama3", tmp_path, seed=0)
    prompts = [p * 3 for p in tm.random_prompts(3, 6, 12, seed=4)]  # repeats: lookups match
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    llm = LLM(str(tmp_path), dtype="float32")
    outputs = [list(o.token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    oracle = Oracle(prompts, outputs, [""] * len(prompts))
    spec = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1, verify_cost_ratio=1.0)
    row = replay(llm, oracle, len(prompts), spec, 20, ignore_eos=True)
    off = replay(llm, oracle, len(prompts), None, 20, ignore_eos=True)
    assert row["tokens"] == off["tokens"] == 60 and off["steps"] == 20
    real = LLM(str(tmp_path), dtype="float32", speculative=spec)
    real.generate(prompts, params, use_tqdm=False)
    m = real.metrics
    assert (m.num_steps, m.num_spec_steps, m.num_draft_tokens) == (
        row["steps"],
        row["verify_steps"],
        row["draft_tokens"],
    )
    assert row["verify_steps"] > 0
