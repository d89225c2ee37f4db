"""Can a decode step's attention (memory-bound) overlap its matmuls (compute-bound) on one GPU?

Times, for a model shape's decode step at `--batch` sequences and `--context` tokens each:
every layer's matmuls alone, every layer's paged attention alone, both one after the other,
half the batch's matmuls on one stream while the other half's attention runs on a second
stream (the two-micro-batch schedule a step would use), and the whole batch's matmuls beside
the whole batch's attention on two streams, once at equal priority and once with the matmuls'
stream at high priority (their blocks take SMs first as SMs free up; attention fills the rest).
If a concurrent time is close to max(matmuls, attention) rather than their sum, that schedule
is worth building. (H100, 2026-11-27: the two micro-batches were 13% slower than serial.)

With --carveout N1,N2,... the last rows repeat "matmuls alone" and "matmuls beside attention"
with cuBLAS told to leave N SMs free (torch's experimental SM carve-out), the room attention
would need to run during the matmuls; "alone" growing by about 132 / (132 - N) shows that the
carve-out took effect.

    python -m bench.overlap_probe --shape llama-3.1-8b --batch 512 --context 640
        [--carveout 16,32,66]
"""

from __future__ import annotations

import argparse

import torch

from bench.shapes import SHAPES
from kernels.paged_attention import paged_attention


def _time(fn, repeats: int = 5) -> float:
    """Median milliseconds of fn() over repeats (after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--context", type=int, default=640)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--carveout", default="", help="comma-separated SM counts to leave free")
    args = ap.parse_args()
    s = SHAPES[args.shape]
    dev, dt = torch.device("cuda"), torch.bfloat16
    hidden, inter = s["hidden_size"], s["intermediate_size"]
    heads, kv_heads, head_dim = s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"]
    weights = [
        torch.randn(n, k, device=dev, dtype=dt) * 0.02
        for n, k in [
            ((heads + 2 * kv_heads) * head_dim, hidden),
            (hidden, heads * head_dim),
            (2 * inter, hidden),
            (hidden, inter),
        ]
    ]
    block = 16
    per_seq = -(-args.context // block)

    def attention_inputs(n: int):
        num_blocks = n * per_seq
        cache = [
            torch.randn(num_blocks, block, kv_heads, head_dim, device=dev, dtype=dt)
            for _ in range(2)
        ]
        tables = torch.randperm(num_blocks, device=dev, dtype=torch.int32).view(n, per_seq)
        cu = torch.arange(n + 1, device=dev, dtype=torch.int32)
        ctx = torch.full((n,), args.context, device=dev, dtype=torch.int32)
        query = torch.randn(n, heads, head_dim, device=dev, dtype=dt)
        return query, cache, tables, cu, ctx

    def matmuls(m: int):
        xs = [torch.randn(m, w.shape[1], device=dev, dtype=dt) for w in weights]

        def run() -> None:
            for _ in range(args.layers):
                for x, w in zip(xs, weights, strict=True):
                    torch.matmul(x, w.t())

        return run

    def attention(n: int):
        query, (k, v), tables, cu, ctx = attention_inputs(n)

        def run() -> None:
            for _ in range(args.layers):
                paged_attention(query, k, v, tables, cu, ctx, head_dim**-0.5)

        return run

    full_mm, full_attn = matmuls(args.batch), attention(args.batch)
    half = args.batch // 2
    half_mm, half_attn = matmuls(half), attention(half)
    side = torch.cuda.Stream()
    low, high = torch.cuda.Stream(priority=0), torch.cuda.Stream(priority=-1)

    def serial() -> None:
        full_mm()
        full_attn()

    def two_streams() -> None:
        # micro-batch A's matmuls beside micro-batch B's attention, then the other way round
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        half_mm()
        with torch.cuda.stream(side):
            half_attn()
        main.wait_stream(side)
        side.wait_stream(main)
        half_attn()
        with torch.cuda.stream(side):
            half_mm()
        main.wait_stream(side)

    def beside(mm_stream: torch.cuda.Stream, attn_stream: torch.cuda.Stream):
        def run() -> None:
            main = torch.cuda.current_stream()
            mm_stream.wait_stream(main)
            attn_stream.wait_stream(main)
            with torch.cuda.stream(mm_stream):
                full_mm()
            with torch.cuda.stream(attn_stream):
                full_attn()
            main.wait_stream(mm_stream)
            main.wait_stream(attn_stream)

        return run

    rows = [
        ("matmuls, full batch", _time(full_mm)),
        ("attention, full batch", _time(full_attn)),
        ("matmuls then attention", _time(serial)),
        ("two micro-batches on two streams", _time(two_streams)),
        ("matmuls beside attention", _time(beside(side, low))),
        ("same, matmuls at high priority", _time(beside(high, low))),
        ("matmuls, half batch", _time(half_mm)),
        ("attention, half batch", _time(half_attn)),
    ]
    for sms in [int(n) for n in args.carveout.split(",") if n]:
        if not hasattr(torch._C, "_set_sm_carveout_experimental"):
            print(f"  this torch ({torch.__version__}) has no SM carve-out")
            break
        torch._C._set_sm_carveout_experimental(sms)
        try:
            rows.append((f"matmuls alone, {sms} SMs free", _time(full_mm)))
            rows.append((f"matmuls beside attention, {sms} free", _time(beside(side, low))))
        finally:
            torch._C._set_sm_carveout_experimental(None)
    print(
        f"{args.shape}, batch {args.batch}, context {args.context}, {args.layers} layers "
        f"({torch.cuda.get_device_name()})"
    )
    for name, ms in rows:
        print(f"  {name:<34} {ms:8.2f} ms  ({ms / args.layers:.3f} per layer)")


if __name__ == "__main__":
    main()
