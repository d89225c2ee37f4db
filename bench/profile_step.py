"""Where one engine step's time goes: host phases timed with device syncs, then the top CUDA
kernels of a few decode steps (torch.profiler). With --phase prefill, the top kernels of a few
full prefill steps (max_num_batched_tokens prompt tokens each) instead, and their time against
the matmul work they hold.

    python -m bench.profile_step --shape llama-3.2-1b --batch 512 --prompt-len 512
    python -m bench.profile_step --shape llama-3.1-8b --batch 64 --prompt-len 4096 \
        --phase prefill [--kv int8]   # WK-like prefill steps
    python -m bench.profile_step --shape llama-3.1-8b --batch 512 --prompt-len 1600 \
        --system-prompts 4 --system-prompt-len 1536 [--plain-attention]   # WP-like
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from bench.shapes import engine_config
from engine.config import CacheConfig, EngineConfig, KVCacheDtype, SchedulerConfig
from engine.factory import create_engine, random_model
from engine.output_processor import OutputProcessor
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import SchedulerOutput


def timed_step(engine, totals: dict[str, float]) -> SchedulerOutput:
    """engine.step() split into phases, each closed by a device sync; returns its schedule."""
    sync = torch.cuda.synchronize
    t0 = time.perf_counter()
    out = engine.scheduler.schedule()
    t1 = time.perf_counter()
    logits = engine.runner.execute(out)
    sync()
    t2 = time.perf_counter()
    sampling = [c.seq for c in out.chunks if c.sample]
    sampled = engine.sampler(logits, sampling)
    t3 = time.perf_counter()
    engine.scheduler.update(out, [[t] for t in sampled.token_ids])
    t4 = time.perf_counter()
    for name, dt in (
        ("schedule", t1 - t0),
        ("execute", t2 - t1),
        ("sample", t3 - t2),
        ("update", t4 - t3),
    ):
        totals[name] += dt
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--kv", default="auto")
    ap.add_argument("--system-prompts", type=int, default=0, help="prompts start with one of N")
    ap.add_argument("--system-prompt-len", type=int, default=0)
    ap.add_argument("--plain-attention", action="store_true", help="no shared-prefix attention")
    ap.add_argument("--phase", choices=["decode", "prefill"], default="decode")
    args = ap.parse_args()
    cfg = engine_config(args.shape, args.prompt_len + 256)
    model = random_model(cfg, torch.bfloat16, torch.device("cuda"))
    config = EngineConfig(
        model=cfg,
        cache=CacheConfig(
            kv_cache_dtype=KVCacheDtype(args.kv), shared_prefix_attention=not args.plain_attention
        ),
        scheduler=SchedulerConfig(16384, args.batch),
        dtype=torch.bfloat16,
        device="cuda",
    )
    engine = create_engine(config, model, OutputProcessor(None), frozenset())
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    systems = [
        torch.randint(10, cfg.vocab_size, (args.system_prompt_len,), generator=g).tolist()
        for _ in range(args.system_prompts)
    ]
    for i in range(args.batch):
        own = args.prompt_len - (args.system_prompt_len if systems else 0)
        prompt = torch.randint(10, cfg.vocab_size, (own,), generator=g).tolist()
        if systems:
            prompt = systems[i % len(systems)] + prompt
        engine.add_request(Request(i, tuple(prompt), params))
    if args.phase == "prefill":
        profile_prefill(engine, cfg)
        return
    while (
        any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running)
        or engine.scheduler.waiting
    ):
        engine.step()
    for _ in range(3):
        engine.step()
    engine.drain()  # the phases below run one step at a time, nothing pending
    totals: dict[str, float] = defaultdict(float)
    for _ in range(args.steps):
        timed_step(engine, totals)
    print(
        f"shared-prefix steps so far: {engine.metrics.num_shared_prefix_steps}; "
        f"decode step, batch {args.batch}, context ~{args.prompt_len}: "
        + ", ".join(f"{k} {v / args.steps * 1000:.2f} ms" for k, v in totals.items())
    )
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    torch.cuda.synchronize()
    print(f"plain engine.step: {(time.perf_counter() - t) / args.steps * 1000:.2f} ms")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            engine.step()
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60)
    )


def profile_prefill(engine, cfg, steps: int = 3) -> None:
    """Two warm-up prefill steps, then `steps` timed and profiled ones (all prompt tokens)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        engine.step()
    engine.drain()
    torch.cuda.synchronize()
    flops = 0.0
    layer_params = cfg.param_counts()["layers"]
    totals: dict[str, float] = defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            out = timed_step(engine, totals)
            flops += 2 * layer_params * out.num_prefill_tokens
        wall = time.perf_counter() - start
    print(
        f"prefill steps: {wall / steps * 1000:.1f} ms each, layer matmuls "
        f"{flops / steps / 1e12:.1f} TFLOP each ({flops / wall / 1e12:.0f} TFLOP/s)"
    )
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70)
    )


if __name__ == "__main__":
    main()
