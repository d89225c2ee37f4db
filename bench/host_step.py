"""The host bookkeeping of decode steps without a model, on any machine: the real scheduler,
KV cache manager and host batch (block table, shared-prefix plan), tokens drawn at random in
place of the GPU's. What a step costs the host before and after launching; when it exceeds the
GPU time of the step (bench/RESULTS.md: W1 on slower hosts) it sets the pace.

    python -m bench.host_step [--num-seqs 512] [--prompt-len 512] [--steps 200]
        [--block-size 16] [--system-prompt-len 0]
    python -m bench.host_step --phase prefill [--num-seqs 512] [--prompt-len 512]
        [--tokens-per-step 16384]

With --phase prefill, the prompt steps instead (each --tokens-per-step prompt tokens), with the
host-side conversion of their token rows for the copy to the device.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.model_runner import build_host_batch
from engine.request import Request, Sequence
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.shared_prefix import plan_shared_prefix


def run(
    num_seqs: int, prompt_len: int, steps: int, block_size: int, system_prompt_len: int
) -> dict[str, float]:
    """Milliseconds per decode step in each phase (medians over steps)."""
    rng = random.Random(0)
    max_len = prompt_len + steps + 1
    kv = KVCacheManager(num_seqs * -(-max_len // block_size) + 1, block_size, True)
    scheduler = Scheduler(
        SchedulerConfig(max_num_batched_tokens=num_seqs * prompt_len, max_num_seqs=num_seqs), kv
    )
    system = [rng.randrange(1000) for _ in range(system_prompt_len)]
    params = SamplingParams(max_tokens=steps + 1, ignore_eos=True)
    for i in range(num_seqs):
        prompt = system + [rng.randrange(1000) for _ in range(prompt_len - system_prompt_len)]
        scheduler.add(Sequence.from_request(Request(i, tuple(prompt), params)))
    scheduler.update(scheduler.schedule(), [[1]] * num_seqs)  # the prefill step
    phases: dict[str, list[float]] = {"schedule": [], "host batch": [], "block table": []}
    phases.update({"shared-prefix plan": [], "update": [], "total": []})
    for _ in range(steps):
        t0 = time.perf_counter()
        out = scheduler.schedule()
        t1 = time.perf_counter()
        host = build_host_batch(out, block_size)
        t2 = time.perf_counter()
        table = host.block_table()
        t3 = time.perf_counter()
        if out.any_shared_blocks:
            plan_shared_prefix(table, np.asarray(host.context_lens), block_size, 4, 8)
        t4 = time.perf_counter()
        scheduler.update(out, [[rng.randrange(1000)] for _ in out.chunks])
        t5 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)
        for name, seconds in zip(phases, times, strict=True):
            phases[name].append(1000 * seconds)
    return {name: float(np.median(ms)) for name, ms in phases.items()}


def run_prefill(
    num_seqs: int, prompt_len: int, block_size: int, tokens_per_step: int
) -> dict[str, float]:
    """Milliseconds per prompt step in each phase (medians over the steps that fill
    tokens_per_step with prompt tokens)."""
    rng = random.Random(0)
    kv = KVCacheManager(num_seqs * -(-(prompt_len + 1) // block_size) + 1, block_size, True)
    scheduler = Scheduler(SchedulerConfig(tokens_per_step, num_seqs), kv)
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    for i in range(num_seqs):
        prompt = tuple(rng.randrange(100_000) for _ in range(prompt_len))
        scheduler.add(Sequence.from_request(Request(i, prompt, params)))
    phases: dict[str, list[float]] = {"schedule": [], "host batch": [], "token columns": []}
    phases.update({"update": [], "total": []})
    while True:
        t0 = time.perf_counter()
        out = scheduler.schedule()
        t1 = time.perf_counter()
        if sum(c.num_tokens for c in out.chunks) < tokens_per_step:
            break  # the last, partial step
        host = build_host_batch(out, block_size)
        t2 = time.perf_counter()
        host.token_columns()
        t3 = time.perf_counter()
        scheduler.update(out, [[rng.randrange(1000)] for c in out.chunks if c.sample])
        t4 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)
        for name, seconds in zip(phases, times, strict=True):
            phases[name].append(1000 * seconds)
    return {name: float(np.median(ms)) for name, ms in phases.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-seqs", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--system-prompt-len", type=int, default=0, help="shared by every prompt")
    ap.add_argument("--phase", choices=["decode", "prefill"], default="decode")
    ap.add_argument("--tokens-per-step", type=int, default=16384, help="prefill steps' tokens")
    args = ap.parse_args(argv)
    if args.phase == "prefill":
        result = run_prefill(args.num_seqs, args.prompt_len, args.block_size, args.tokens_per_step)
        print(f"host work per {args.tokens_per_step}-token prompt step (median ms):")
    else:
        result = run(
            args.num_seqs, args.prompt_len, args.steps, args.block_size, args.system_prompt_len
        )
        print(f"host work per decode step, {args.num_seqs} sequences (median ms):")
    for name, ms in result.items():
        print(f"  {name:20s} {ms:7.3f}")


if __name__ == "__main__":
    main()
