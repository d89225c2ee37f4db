"""bench.host_step runs the real scheduler and host batch for decode steps without a model."""

from bench.host_step import run, run_prefill


def test_host_step_times_every_phase_and_plans_only_when_blocks_are_shared() -> None:
    shared = run(num_seqs=8, prompt_len=40, steps=5, block_size=4, system_prompt_len=16)
    alone = run(num_seqs=8, prompt_len=40, steps=5, block_size=4, system_prompt_len=0)
    assert set(shared) == {
        "schedule",
        "host batch",
        "block table",
        "shared-prefix plan",
        "update",
        "total",
    }
    assert all(ms > 0 for ms in shared.values())
    assert alone["shared-prefix plan"] < shared["shared-prefix plan"]
    assert alone["total"] >= alone["schedule"] + alone["update"]


def test_host_step_times_prompt_steps_that_fill_the_token_budget() -> None:
    result = run_prefill(num_seqs=12, prompt_len=40, block_size=4, tokens_per_step=100)
    assert set(result) == {"schedule", "host batch", "token columns", "update", "total"}
    assert all(ms > 0 for ms in result.values())
    assert result["total"] >= result["schedule"] + result["host batch"]
