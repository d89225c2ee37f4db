"""bench.host_step runs the real scheduler and host batch for decode steps without a model."""

from bench.host_step import run


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
