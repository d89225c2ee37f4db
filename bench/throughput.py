"""Throughput of our engine vs transformers on a fixed-length workload, with the roofline floor.

    python -m bench.throughput --workload W8 [--hf-requests 256 --hf-batch 64] [--skip-hf]

Builds a random-weight model of a real shape on the GPU, measures the card's ceilings, runs
transformers' static-batch generate (and generate_batch when available) on the workload, copies
the same weights into our engine, runs the workload through it, and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import asdict, dataclass

import torch

from bench.roofline import Ceilings, measure_ceilings, workload_floor
from bench.shapes import engine_config, hf_config
from engine.config import CacheConfig, EngineConfig, KVCacheDtype, ModelConfig, SchedulerConfig
from engine.factory import create_engine
from engine.kernel_set import kernels_for
from engine.loader import load_weights
from engine.model_runner import kv_bytes_per_block
from engine.models.llama import LlamaForCausalLM
from engine.output_processor import OutputProcessor
from engine.request import Request
from engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class Workload:
    shape: str
    prompt_len: int
    gen_len: int
    num_requests: int
    num_system_prompts: int = 0  # > 0: prompts are a shared system prompt + unique tail
    system_prompt_len: int = 0
    # Sequences in flight at most (--max-num-seqs overrides). The 8B workloads' KV cache
    # holds ~512 of their sequences at full length; the 1B shape's holds ~3,000, and 1,024 in
    # flight halves its decode steps (CUDA graphs are captured up to 1,024).
    max_num_seqs: int = 512


WORKLOADS = {
    "W8": Workload("llama-3.1-8b", 512, 256, 1024),
    "W1": Workload("llama-3.2-1b", 512, 256, 2048, max_num_seqs=1024),
    "WK": Workload("llama-3.1-8b", 4096, 512, 512),
    "WP": Workload("llama-3.1-8b", 1600, 128, 2048, num_system_prompts=4, system_prompt_len=1536),
}


def make_prompts(w: Workload, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    if not w.num_system_prompts:
        return torch.randint(10, vocab, (w.num_requests, w.prompt_len), generator=g).tolist()
    systems = torch.randint(10, vocab, (w.num_system_prompts, w.system_prompt_len), generator=g)
    tails = torch.randint(
        10, vocab, (w.num_requests, w.prompt_len - w.system_prompt_len), generator=g
    )
    return [
        systems[i % w.num_system_prompts].tolist() + tails[i].tolist()
        for i in range(w.num_requests)
    ]


def run_engine(
    cfg: ModelConfig,
    model: LlamaForCausalLM,
    prompts: list[list[int]],
    gen_len: int,
    kv_dtype: KVCacheDtype,
    prefix_caching: bool,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    shared_prefix_attention: bool = True,
) -> dict:
    config = EngineConfig(
        model=cfg,
        cache=CacheConfig(
            kv_cache_dtype=kv_dtype,
            enable_prefix_caching=prefix_caching,
            shared_prefix_attention=shared_prefix_attention,
        ),
        scheduler=SchedulerConfig(max_num_batched_tokens, max_num_seqs),
        dtype=torch.bfloat16,
        device="cuda",
    )
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    engine = create_engine(config, model, OutputProcessor(None), frozenset())
    start_seconds = time.perf_counter() - started
    params = SamplingParams(max_tokens=gen_len, temperature=0, ignore_eos=True)
    # warm up the prefill/mixed shapes (Triton compiles once per kernel specialization)
    for i, p in enumerate(prompts[:8]):
        engine.add_request(
            Request(
                f"warm{i}", tuple(p), SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
            )
        )
    while engine.num_unfinished:
        engine.step()
    base = engine.metrics.num_generated_tokens
    base_prompt = engine.metrics.num_computed_tokens
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(Request(i, tuple(p), params, arrival_index=i))
    done = 0
    decode_ms, mixed_ms, shared_ms = [], [], []
    decode_batch, shared_batch = [], []
    m = engine.metrics
    while engine.num_unfinished:
        computed, generated, t = m.num_computed_tokens, m.num_generated_tokens, time.perf_counter()
        running = len(engine.scheduler.running)
        done += len(engine.step())
        dt = (time.perf_counter() - t) * 1000
        is_decode = m.num_computed_tokens - computed == m.num_generated_tokens - generated
        (decode_ms if is_decode else mixed_ms).append(dt)
        if is_decode:
            decode_batch.append(running)
            if engine.runner.last_shared_prefix is not None:
                shared_ms.append(dt)
                shared_batch.append(running)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    m = engine.metrics
    out_tokens = m.num_generated_tokens - base
    assert done == len(prompts) and out_tokens == len(prompts) * gen_len
    result = {
        "seconds": seconds,
        "out_tok_s": out_tokens / seconds,
        "total_tok_s": (out_tokens + sum(map(len, prompts))) / seconds,
        "kv_blocks": engine.kv_cache.num_blocks,
        "kv_tokens": engine.kv_cache.num_blocks * config.cache.block_size,
        "peak_blocks_used": m.peak_blocks_used,
        "preemptions": m.num_preemptions,
        "steps": m.num_steps,
        "computed_tokens": m.num_computed_tokens - base_prompt,
        "cached_prompt_tokens": m.num_cached_prompt_tokens,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "engine_start_s": start_seconds,
        "prefill_s": m.prefill_seconds,
        "decode_s": m.decode_seconds,
        "shared_prefix_steps": m.num_shared_prefix_steps,
        "decode_steps": _step_stats(decode_ms),
        "decode_batch_median": _median(decode_batch),
        "shared_prefix_decode_steps": _step_stats(shared_ms),
        "shared_prefix_batch_median": _median(shared_batch),
        "mixed_steps": _step_stats(mixed_ms),
    }
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result


def _median(values: list[int]) -> float:
    return float(sorted(values)[len(values) // 2]) if values else 0.0


def _step_stats(ms: list[float]) -> dict:
    if not ms:
        return {"count": 0}
    ms = sorted(ms)
    return {
        "count": len(ms),
        "median_ms": ms[len(ms) // 2],
        "p90_ms": ms[int(len(ms) * 0.9)],
        "max_ms": ms[-1],
        "total_s": sum(ms) / 1000,
    }


def run_hf_static(hf, prompts: list[list[int]], gen_len: int, batch: int) -> dict:
    from transformers import GenerationConfig

    gc_ = GenerationConfig(
        max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False, pad_token_id=0
    )
    hf.generation_config.eos_token_id = None
    warm = torch.tensor(prompts[:batch], device="cuda")
    hf.generate(
        warm,
        attention_mask=torch.ones_like(warm),
        generation_config=GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=0),
    )
    torch.cuda.synchronize()
    started = time.perf_counter()
    out_tokens = 0
    for i in range(0, len(prompts), batch):
        ids = torch.tensor(prompts[i : i + batch], device="cuda")
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc_)
        out_tokens += (out.shape[1] - ids.shape[1]) * ids.shape[0]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "out_tok_s": out_tokens / seconds,
        "requests": len(prompts),
        "batch": batch,
    }


def run_hf_generate_batch(hf, prompts: list[list[int]], gen_len: int) -> dict:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=gen_len, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    started = time.perf_counter()
    outputs = hf.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    out_tokens = sum(len(o.generated_tokens) for o in outputs.values())
    return {"seconds": seconds, "out_tok_s": out_tokens / seconds, "requests": len(prompts)}


def build_models(w: Workload, max_model_len: int, need_hf: bool):
    """(hf model or None, our model) with identical random weights."""
    cfg = engine_config(w.shape, max_model_len)
    device = torch.device("cuda")
    ours = LlamaForCausalLM(cfg, kernels_for(device), torch.bfloat16, device)
    if need_hf:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        with torch.device("cuda"):
            hf = AutoModelForCausalLM.from_config(
                hf_config(w.shape, max_model_len), dtype=torch.bfloat16
            ).eval()
        load_weights(ours, iter(hf.state_dict().items()))
        return cfg, hf, ours
    from engine.factory import random_model

    return cfg, None, random_model(cfg, torch.bfloat16, device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    ap.add_argument("--num-requests", type=int, default=None)
    ap.add_argument("--hf-requests", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument(
        "--hf-generate-batch", action="store_true", help="also time transformers generate_batch"
    )
    ap.add_argument(
        "--max-num-seqs", type=int, default=None, help="default: the workload's (512; W1 1024)"
    )
    ap.add_argument("--max-num-batched-tokens", type=int, default=16384)
    ap.add_argument(
        "--skip-plain-attention",
        action="store_true",
        help="WP: leave out the prefix-cache-on run with shared-prefix attention off",
    )
    ap.add_argument("--only", default=None, help="comma-separated run names to keep")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args(argv)
    w = WORKLOADS[args.workload]
    if args.num_requests:
        w = Workload(**{**asdict(w), "num_requests": args.num_requests})
    if args.max_num_seqs is None:
        args.max_num_seqs = w.max_num_seqs
    max_model_len = w.prompt_len + w.gen_len
    torch.backends.cuda.matmul.allow_tf32 = True
    ceilings = measure_ceilings(torch.device("cuda"))
    cfg, hf, ours = build_models(w, max_model_len, need_hf=not args.skip_hf)
    prompts = make_prompts(w, cfg.vocab_size)
    results: dict = {
        "workload": args.workload,
        **asdict(w),
        "ceilings": asdict(ceilings),
        "runs": {},
    }
    if hf is not None:
        results["runs"]["hf_static"] = run_hf_static(
            hf, prompts[: args.hf_requests], w.gen_len, args.hf_batch
        )
        if args.hf_generate_batch:
            try:
                results["runs"]["hf_generate_batch"] = run_hf_generate_batch(
                    hf, prompts[: args.hf_requests], w.gen_len
                )
            except Exception as exc:  # report, don't hide: the table says why it is missing
                results["runs"]["hf_generate_batch"] = {
                    "error": f"{type(exc).__name__}: {exc}"[:200]
                }
        del hf
        gc.collect()
        torch.cuda.empty_cache()
    # name -> (KV dtype, prefix caching, shared-prefix attention)
    variants = {"ours": (KVCacheDtype.AUTO, True, True)}
    if args.workload == "WK":
        variants = {
            "ours_bf16_kv": (KVCacheDtype.AUTO, True, True),
            "ours_int8_kv": (KVCacheDtype.INT8, True, True),
        }
    if args.workload == "WP":
        variants = {
            "ours_prefix_on": (KVCacheDtype.AUTO, True, True),
            "ours_prefix_on_plain_attn": (KVCacheDtype.AUTO, True, False),
            "ours_prefix_off": (KVCacheDtype.AUTO, False, False),
        }
        if args.skip_plain_attention:
            del variants["ours_prefix_on_plain_attn"]
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    for name, (kv_dtype, prefix, shared_attention) in variants.items():
        print(f"running {name}", flush=True)
        r = run_engine(
            cfg,
            ours,
            prompts,
            w.gen_len,
            kv_dtype,
            prefix,
            args.max_num_seqs,
            args.max_num_batched_tokens,
            shared_attention,
        )
        cache = CacheConfig(kv_cache_dtype=kv_dtype)
        per_token = kv_bytes_per_block(cfg, cache, torch.bfloat16) // cache.block_size
        batch = min(args.max_num_seqs, r["kv_tokens"] // max_model_len, w.num_requests)
        computed = None
        if w.num_system_prompts and prefix:
            computed = w.num_system_prompts * w.system_prompt_len + w.num_requests * (
                w.prompt_len - w.system_prompt_len
            )
        floor = workload_floor(
            cfg, ceilings, w.num_requests, w.prompt_len, w.gen_len, batch, per_token, computed
        )
        r["floor_out_tok_s"] = w.num_requests * w.gen_len / floor.seconds
        r["fraction_of_floor"] = r["out_tok_s"] / r["floor_out_tok_s"]
        r["floor"] = asdict(floor)
        results["runs"][name] = r
    print_table(results, ceilings)
    for name, r in results["runs"].items():
        if "decode_steps" in r:
            print(name, "decode steps", r["decode_steps"], "mixed steps", r["mixed_steps"])
            print(
                f"  decode batch median {r['decode_batch_median']:.0f}; shared-prefix steps",
                r["shared_prefix_decode_steps"],
                f"batch median {r['shared_prefix_batch_median']:.0f}",
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def print_table(results: dict, ceilings: Ceilings) -> None:
    print(
        f"\n{results['workload']} ({results['shape']}, {results['prompt_len']}/{results['gen_len']}, "
        f"N={results['num_requests']}) on {torch.cuda.get_device_name()}"
    )
    print(
        f"ceilings: matmul {ceilings.matmul_flops / 1e12:.0f} TFLOP/s, copy {ceilings.copy_bytes / 1e9:.0f} GB/s"
    )
    runs = results["runs"]
    hf = runs.get("hf_static", {}).get("out_tok_s")
    header = (
        "out tok/s",
        "total tok/s",
        "x HF static",
        "of floor",
        "KV blocks",
        "peak GiB",
        "start s",
    )
    print(f"{'run':<18}" + "".join(f"{h:>12}" for h in header))
    for name, r in runs.items():
        if "error" in r:
            print(f"{name:<18} {r['error']}")
            continue
        ratio = f"{r['out_tok_s'] / hf:.2f}" if hf and name.startswith("ours") else "-"
        frac = f"{r['fraction_of_floor']:.0%}" if "fraction_of_floor" in r else "-"
        cells = (
            f"{r['out_tok_s']:.0f}",
            f"{r.get('total_tok_s', 0):.0f}",
            ratio,
            frac,
            str(r.get("kv_blocks", "-")),
            f"{r.get('peak_mem_gib', 0):.1f}",
            f"{r.get('engine_start_s', 0):.1f}",
        )
        print(f"{name:<18}" + "".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(main())
