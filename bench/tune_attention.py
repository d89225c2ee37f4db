"""Sweep the paged-attention tile configs (kernels/paged_attention.py TileConfig) on a GPU, for
the step shapes the workloads run, and print each config's time next to the default's.

Scenarios (8B shape by default: 32 query / 8 KV heads, head_dim 128, block 16):
  decode   512 sequences, one query each, context --context (decode tiles: 16 query rows)
  prefill  fresh prompts of --prompt-len tokens (context = query), as many as fill 16k tokens
           (prefill tiles: 64 or 128 query rows)
  chunk    second halves of --prompt-len prompts (the first half cached), 16k query tokens
Each runs over a bf16 cache, an INT8 cache as the engine lays it out (values slot-major, scales
head-major, kernels/kv_store.py), the same with chunks reading their own keys from the step's
unquantized key / value (int8-fresh: what the engine does), and INT8 caches in the earlier
layouts (row-major scales; row-major values and scales). Reports milliseconds, and the
decode scenario's cache read rate (GB/s) and the prefill scenarios' attention TFLOP/s.
WK's decode shape is --decode-seqs 188 --context 4352.

    python -m bench.tune_attention [--shape llama-3.1-8b] [--context 640] [--decode-seqs 512]
        [--prompt-len 512] [--no-sweep]
        [--scenario decode|prefill|chunk]
        [--cache bf16|bf16-fresh|int8|int8-fresh|int8-row-scales|int8-row-major]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from bench.roofline import time_cuda
from bench.shapes import SHAPES
from kernels.kv_store import (
    quantize_int8_ref,
    slot_major_values,
    to_head_major_scales,
    to_slot_major,
)
from kernels.paged_attention import TileConfig, default_tile_config, launch_paged_attention

# Cache name -> make_step's (int8, slot_major, head_major_scales, fresh): bf16 (its chunks
# reading the cache, as the engine does, or their own keys), INT8 as the engine lays it out
# (its chunks reading the cache, or their own keys as the engine does), and the two earlier
# INT8 layouts (row-major scales; row-major values and scales).
CACHES = {
    "bf16": (False, True, True, False),
    "bf16-fresh": (False, True, True, True),
    "int8": (True, True, True, False),
    "int8-fresh": (True, True, True, True),
    "int8-row-scales": (True, True, False, False),
    "int8-row-major": (True, False, False, False),
}


def make_step(
    seqs: list[tuple[int, int]],
    kv_heads: int,
    heads: int,
    head_dim: int,
    int8: bool,
    slot_major: bool = True,
    head_major_scales: bool = True,
    fresh: bool = False,
):
    """Query, cache, tables, cu_query_lens, context_lens, scales and the step's key / value
    rows (empty unless fresh) for (context, query) seqs; INT8 laid out as the engine allocates
    it (values slot-major, scales head-major) unless slot_major or head_major_scales is False."""
    dev, block = torch.device("cuda"), 16
    per_seq = [-(-c // block) for c, _ in seqs]
    num_blocks = sum(per_seq)
    table = torch.zeros(len(seqs), max(per_seq), dtype=torch.int32)
    order = torch.randperm(num_blocks, dtype=torch.int32)
    used = 0
    for s, n in enumerate(per_seq):
        table[s, :n] = order[used : used + n]
        used += n
    query_lens = torch.tensor([q for _, q in seqs])
    cu = torch.cat((torch.zeros(1, dtype=torch.long), query_lens.cumsum(0))).to(torch.int32)
    shape = (num_blocks, block, kv_heads, head_dim)
    k = torch.randn(shape, device=dev, dtype=torch.bfloat16)
    v = torch.randn(shape, device=dev, dtype=torch.bfloat16)
    scales: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    if int8:
        (k, k_scale), (v, v_scale) = quantize_int8_ref(k), quantize_int8_ref(v)
        if slot_major and slot_major_values(torch.int8, block):
            v = to_slot_major(v)
        if head_major_scales:
            k_scale, v_scale = to_head_major_scales(k_scale), to_head_major_scales(v_scale)
        scales = (k_scale, v_scale)
    query = torch.randn(int(cu[-1]), heads, head_dim, device=dev, dtype=torch.bfloat16)
    ctx = torch.tensor([c for c, _ in seqs], dtype=torch.int32, device=dev)
    step_kv = {}
    if fresh:
        rows = (query.shape[0], kv_heads, head_dim)
        step_kv = {n: torch.randn(rows, device=dev, dtype=torch.bfloat16) for n in ("key", "value")}
    return query, k, v, table.to(dev), cu.to(dev), ctx, scales, step_kv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--context", type=int, default=640)
    ap.add_argument("--decode-seqs", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--no-sweep", action="store_true", help="time the default configs only")
    ap.add_argument(
        "--scenario", choices=["decode", "prefill", "chunk"], default=None, help="only this"
    )
    ap.add_argument("--cache", choices=list(CACHES), default=None, help="only this")
    args = ap.parse_args()
    s = SHAPES[args.shape]
    heads, kv_heads, head_dim = s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"]
    group_pad = 1 << (heads // kv_heads - 1).bit_length()
    prompts = max(1, 16384 // args.prompt_len)
    scenarios = {
        "decode": [(args.context, 1)] * args.decode_seqs,
        "prefill": [(args.prompt_len, args.prompt_len)] * prompts,
        "chunk": [(args.prompt_len, args.prompt_len // 2)] * (2 * prompts),
    }

    def grid(rows: list[int], block_n: list[int], stages: list[int]) -> list[TileConfig]:
        return [
            TileConfig(block_q=max(1, m // group_pad), block_n=bn, num_warps=w, num_stages=st)
            for m, bn, w, st in itertools.product(rows, block_n, [4, 8], stages)
        ]

    # Launches with fresh keys also pick fresh_block_n (the cache part of a chunk, block_n,
    # is the smaller share of its keys).
    fresh_grid = [
        TileConfig(max(1, m // group_pad), bn, w, 3, fresh_block_n=fbn)
        for m, bn, fbn, w in itertools.product([64, 128], [32, 64, 128], [32, 64], [4, 8])
    ]
    prefill_grid = grid([64, 128], [32, 64, 128], [2, 3])
    grids = {
        "decode": grid([16], [32, 64, 128, 256], [2, 3, 4]),
        "prefill": prefill_grid,
        "chunk": prefill_grid,
    }
    if args.no_sweep:
        grids = {"decode": [], "prefill": [], "chunk": []}
    print(f"{args.shape} ({torch.cuda.get_device_name()}): heads {heads}/{kv_heads}, d {head_dim}")
    caches = CACHES
    if args.scenario:
        scenarios = {args.scenario: scenarios[args.scenario]}
    if args.cache:
        caches = {args.cache: caches[args.cache]}
    for (name, seqs), (cache, layout) in itertools.product(scenarios.items(), caches.items()):
        configs = (
            fresh_grid if layout[3] and name != "decode" and not args.no_sweep else grids[name]
        )
        sweep(name, seqs, cache, layout, configs, heads, kv_heads, head_dim, group_pad)


def sweep(
    name: str,
    seqs: list[tuple[int, int]],
    cache: str,
    layout: tuple[bool, bool, bool, bool],
    configs: list[TileConfig],
    heads: int,
    kv_heads: int,
    head_dim: int,
    group_pad: int,
) -> None:
    """Time every config (and the default) on one scenario; print the default and the best 5."""
    int8, fresh = layout[0], layout[3] and name != "decode"  # decodes read no fresh keys
    query, k, v, table, cu, ctx, (k_scale, v_scale), step_kv = make_step(
        seqs, kv_heads, heads, head_dim, *layout[:3], fresh
    )
    if name == "decode":
        amount = sum(c for c, _ in seqs) * kv_heads * head_dim * 2 * (1 if int8 else 2) / 1e6
        unit = "GB/s"  # bytes / ms / 1e6
    else:
        # causal: a query at position p sees p + 1 keys
        amount = sum(4 * q * (c - q / 2) * head_dim * heads for c, q in seqs) / 1e9
        unit = "TFLOP/s"  # flops / ms / 1e9
    default = default_tile_config(query.shape[0], len(seqs), group_pad, int8, fresh)
    results: list[tuple[float, TileConfig]] = []
    for config in [*configs, default]:
        if config in [c for _, c in results]:
            continue
        try:
            ms = 1000 * time_cuda(
                lambda c=config: launch_paged_attention(
                    query, k, v, table, cu, ctx, head_dim**-0.5, k_scale, v_scale, c, **step_kv
                ),
                10,
            )
        except Exception as exc:  # out of shared memory etc.: say so and go on
            print(f"  {name} {cache} {config}: {type(exc).__name__}")
            continue
        results.append((ms, config))
    results.sort(key=lambda r: r[0])
    default_ms = next(ms for ms, c in results if c == default)
    print(
        f"{name} / {cache} cache: default {default} {default_ms:.3f} ms "
        f"{amount / default_ms:8.1f} {unit}"
    )
    for ms, config in results[:5]:
        print(f"    {ms:.3f} ms {amount / ms:8.1f} {unit}  x{default_ms / ms:.2f}  {config}")


if __name__ == "__main__":
    main()
