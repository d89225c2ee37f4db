"""The card's two ceilings, measured, and the roofline floor of a fixed-length workload."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.config import ModelConfig


@dataclass(frozen=True)
class Ceilings:
    matmul_flops: float  # bf16 FLOP/s of a large square matmul
    copy_bytes: float  # bytes/s moved by a large device-to-device copy (read + write)


def time_cuda(fn, repeats: int) -> float:
    """Mean seconds of fn() over repeats back to back (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def _matmul_seconds(n: int, device: torch.device) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    return time_cuda(lambda: a @ b, 30)


def _copy_seconds(num_bytes: int, device: torch.device) -> float:
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return time_cuda(lambda: dst.copy_(src), 20)


def measure_ceilings(device: torch.device) -> Ceilings:
    n, num_bytes = 8192, 1 << 31
    ceilings = Ceilings(
        matmul_flops=2 * n**3 / _matmul_seconds(n, device),
        copy_bytes=2 * num_bytes / _copy_seconds(num_bytes, device),
    )
    torch.cuda.empty_cache()
    return ceilings


@dataclass(frozen=True)
class Floor:
    flops: float
    bytes: float
    seconds: float  # max(flops / matmul rate, bytes / copy bandwidth)
    compute_seconds: float
    memory_seconds: float


def workload_floor(
    cfg: ModelConfig,
    ceilings: Ceilings,
    num_requests: int,
    prompt_len: int,
    gen_len: int,
    batch_size: int,
    kv_bytes_per_token: int,
    computed_prompt_tokens: int | None = None,
    weight_bytes_per_param: int = 2,
) -> Floor:
    """Least time any engine needs on this card: every token's matmul and attention FLOPs at the
    matmul ceiling, or the bytes that must move at the copy ceiling (weights once per decode
    step with batch_size sequences decoding together, every sequence's KV read once per step,
    all KV written once), whichever is larger. computed_prompt_tokens, when given, replaces
    num_requests * prompt_len (a prefix cache skips the rest)."""
    p = cfg.param_counts()
    linear = 2 * p["layers"]
    head = 2 * p["lm_head"]
    attn_per_ctx = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim
    prompt_tokens = (
        computed_prompt_tokens if computed_prompt_tokens is not None else num_requests * prompt_len
    )
    prefill = (
        prompt_tokens * linear + num_requests * attn_per_ctx * prompt_len * (prompt_len + 1) / 2
    )
    decode_ctx = sum(prompt_len + t for t in range(1, gen_len))
    decode = num_requests * ((gen_len - 1) * linear + attn_per_ctx * decode_ctx)
    flops = prefill + decode + num_requests * gen_len * head
    steps = math.ceil(num_requests / batch_size) * (gen_len - 1)
    weight_bytes = (p["layers"] + p["lm_head"]) * weight_bytes_per_param
    kv_read = num_requests * decode_ctx * kv_bytes_per_token
    kv_write = (prompt_tokens + num_requests * gen_len) * kv_bytes_per_token
    total_bytes = steps * weight_bytes + kv_read + kv_write
    compute = flops / ceilings.matmul_flops
    memory = total_bytes / ceilings.copy_bytes
    return Floor(flops, total_bytes, max(compute, memory), compute, memory)
