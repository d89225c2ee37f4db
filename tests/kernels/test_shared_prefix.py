"""Shared-prefix (cascade) attention: the prefix pass against its torch reference, and paged
attention split into prefix + own keys against plain paged attention, over plain and INT8
caches. The tiling comes from the engine's planner, the real producer of these plans."""

import numpy as np
import pytest
import torch
import triton.language as tl

from engine.shared_prefix import max_plan_tiles, plan_shared_prefix
from kernels.kv_store import quantize_int8_ref, to_head_major_scales, to_slot_major
from kernels.paged_attention import paged_attention, paged_attention_ref
from kernels.shared_prefix import (
    SharedPrefix,
    shared_prefix_attention,
    shared_prefix_attention_ref,
)
from tests.block_tables import contexts_ending_in_last_block, padded, random_prefix_tree

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1.5e-2}


def make_decode_batch(
    groups: list[tuple[int, list[int]]],
    *,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    num_padding_seqs: int = 0,
    device: str = DEVICE,
):
    """Decoding sequences in groups: (shared_blocks, [context_len of each member]). Members of
    a group hold the same physical blocks for their first shared_blocks blocks (a group with
    one member shares nothing), then blocks of their own; blocks are handed out shuffled.
    Padding sequences (context 0) follow, as in a CUDA graph's padded batch."""
    generator = torch.Generator().manual_seed(0)
    rows: list[list[int]] = []
    contexts: list[int] = []
    need = sum(
        shared + sum(-(-c // block_size) - shared for c in members) for shared, members in groups
    )
    order = torch.randperm(2 * need + 1, generator=generator).tolist()
    for shared, members in groups:
        prefix = [order.pop() for _ in range(shared)]
        for c in members:
            rows.append(prefix + [order.pop() for _ in range(-(-c // block_size) - shared)])
            contexts.append(c)
    for _ in range(num_padding_seqs):
        rows.append([])
        contexts.append(0)
    table = padded(rows)
    num_seqs = len(rows)
    cache_shape = (2 * need + 1, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=generator).to(dtype=dtype, device=device)
    v_cache = torch.randn(cache_shape, generator=generator).to(dtype=dtype, device=device)
    query = torch.randn(num_seqs, num_kv_heads * group, head_dim, generator=generator)
    return (
        query.to(dtype=dtype, device=device),
        k_cache,
        v_cache,
        table,
        np.array(contexts, dtype=np.int32),
    )


def to_device(plan, seqs_per_tile: int, num_tiles: int, device: str) -> SharedPrefix:
    def t(a: np.ndarray, size: int | None = None, fill: int = 0) -> torch.Tensor:
        out = np.full(size if size is not None else a.shape[0], fill, dtype=np.int32)
        out[: a.shape[0]] = a[: out.shape[0]]
        return torch.from_numpy(out).to(device)

    return SharedPrefix(
        prefix_lens=t(plan.prefix_lens),
        seq_order=t(plan.seq_order),
        tile_leader=t(plan.tile_leader, num_tiles, -1),
        tile_prefix_len=t(plan.tile_prefix_len, num_tiles),
        tile_first=t(plan.tile_first, num_tiles),
        tile_count=t(plan.tile_count, num_tiles),
        seqs_per_tile=seqs_per_tile,
    )


def attention_args(
    query, k_cache, v_cache, table: np.ndarray, contexts: np.ndarray, scale: float, *scales
) -> tuple:
    """paged_attention's positional arguments for a decode step (one query per sequence) on
    query's device."""
    device = query.device
    return (
        query,
        k_cache,
        v_cache,
        torch.from_numpy(table).to(device),
        torch.arange(len(contexts) + 1, dtype=torch.int32, device=device),
        torch.from_numpy(contexts).to(device),
        scale,
        *scales,
    )


GROUPS = [
    (3, [13, 14, 16, 17, 29]),  # 3 shared blocks of 4; one member ends right at a block end
    (2, [9, 11, 12]),
    (0, [7]),
    (0, [21]),
]


def _run(dtype, int8: bool, *, seqs_per_tile: int, num_padding_seqs: int = 0):
    query, k_cache, v_cache, table, contexts = make_decode_batch(
        GROUPS,
        num_kv_heads=2,
        group=4,
        head_dim=16,
        block_size=4,
        dtype=dtype,
        num_padding_seqs=num_padding_seqs,
    )
    scales: tuple[torch.Tensor, ...] = ()
    if int8:
        k_cache, k_scale = quantize_int8_ref(k_cache)
        v_cache, v_scale = quantize_int8_ref(v_cache)
        scales = (k_scale, v_scale)
    plan = plan_shared_prefix(table, contexts, 4, seqs_per_tile, max_groups=4)
    assert plan is not None
    num_tiles = max_plan_tiles(len(contexts), seqs_per_tile, 4) + 2  # spare tiles stay unused
    prefix = to_device(plan, seqs_per_tile, num_tiles, DEVICE)
    args = attention_args(query, k_cache, v_cache, table, contexts, 0.25, *scales)
    return args, prefix, plan


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("int8", [False, True], ids=["plain_cache", "int8_cache"])
def test_paged_attention_with_shared_prefix_matches_plain_attention(dtype, int8) -> None:
    args, prefix, plan = _run(dtype, int8, seqs_per_tile=4, num_padding_seqs=3)
    # groups of 5 and 3 members: the 5 need two tiles of 4
    assert plan.num_tiles == 3
    assert plan.prefix_lens.tolist()[:8] == [12] * 5 + [8] * 3
    out = paged_attention(*args, shared_prefix=prefix)
    expected = paged_attention_ref(*args)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    assert torch.equal(out[-3:], torch.zeros_like(out[-3:]))  # padding sequences


def test_shared_prefix_over_slot_major_int8_values_matches_plain_attention() -> None:
    # 16-slot blocks (INT8 values slot-major, kernels/kv_store.py); contexts end before, at and
    # after block boundaries.
    groups = [(2, [33, 40, 48, 49, 70]), (1, [17, 31]), (0, [5])]
    query, k_cache, v_cache, table, contexts = make_decode_batch(
        groups, num_kv_heads=2, group=4, head_dim=16, block_size=16, dtype=torch.float32
    )
    k_cache, k_scale = quantize_int8_ref(k_cache)
    v_cache, v_scale = quantize_int8_ref(v_cache)
    v_cache = to_slot_major(v_cache)
    k_scale, v_scale = to_head_major_scales(k_scale), to_head_major_scales(v_scale)
    plan = plan_shared_prefix(table, contexts, 16, 4, max_groups=4)
    assert plan is not None and plan.prefix_lens.tolist()[:7] == [32] * 5 + [16] * 2
    prefix = to_device(plan, 4, max_plan_tiles(len(contexts), 4, 4), DEVICE)
    args = attention_args(query, k_cache, v_cache, table, contexts, 0.25, k_scale, v_scale)
    out = paged_attention(*args, shared_prefix=prefix)
    torch.testing.assert_close(out, paged_attention_ref(*args), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("int8", [False, True], ids=["plain_cache", "int8_cache"])
def test_shared_prefix_pass_matches_reference(int8) -> None:
    args, prefix, _ = _run(torch.float32, int8, seqs_per_tile=8)
    query, k_cache, v_cache, block_tables, _, _, scale, *scales = args
    k_scale, v_scale = scales if scales else (None, None)
    out, lse = shared_prefix_attention(
        query, k_cache, v_cache, block_tables, prefix, scale, k_scale, v_scale, tl.float32, "ieee"
    )
    expected_out, expected_lse = shared_prefix_attention_ref(
        query, k_cache, v_cache, block_tables, prefix, scale, k_scale, v_scale
    )
    covered = prefix.prefix_lens > 0
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[covered], expected_out[covered], atol=1e-5, rtol=1e-5)
    assert torch.isinf(lse[~covered]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("int8", [False, True], ids=["bf16_cache", "int8_cache"])
def test_shared_prefix_attention_matches_plain_at_real_sizes_in_bf16(int8) -> None:
    """4 system prompts of 1,536 tokens under 128 decoding sequences (the WP workload's shape)."""
    generator = np.random.default_rng(0)
    groups = [(96, (1536 + generator.integers(1, 192, size=32)).tolist()) for _ in range(4)]
    query, k_cache, v_cache, table, contexts = make_decode_batch(
        groups,
        num_kv_heads=8,
        group=4,
        head_dim=128,
        block_size=16,
        dtype=torch.bfloat16,
        num_padding_seqs=8,
        device="cuda",
    )
    scales: tuple[torch.Tensor, ...] = ()
    if int8:  # laid out as the engine lays out INT8 at 16-slot blocks (kernels/kv_store.py)
        k_cache, k_scale = quantize_int8_ref(k_cache)
        v_cache, v_scale = quantize_int8_ref(v_cache)
        v_cache = to_slot_major(v_cache)
        scales = (to_head_major_scales(k_scale), to_head_major_scales(v_scale))
    plan = plan_shared_prefix(table, contexts, 16, 16, max_groups=32)
    assert plan is not None and plan.num_tiles == 8
    prefix = to_device(plan, 16, max_plan_tiles(len(contexts), 16, 32), "cuda")
    args = attention_args(query, k_cache, v_cache, table, contexts, 128**-0.5, *scales)
    out = paged_attention(*args, shared_prefix=prefix)
    torch.testing.assert_close(out, paged_attention_ref(*args), atol=1.5e-2, rtol=1.5e-2)


@pytest.mark.parametrize("seed", range(4))
def test_shared_prefix_attention_matches_plain_over_random_prefix_trees(seed) -> None:
    """Nested sharing (a sequence shares some blocks with one group and fewer with another),
    as the prefix cache produces it; fp32, so the split must not change the result."""
    rng = np.random.default_rng(seed)
    block_size, num_kv_heads, group, head_dim = 4, 2, 2, 16
    rows, next_block = random_prefix_tree(rng, num_seqs=(4, 14), own_blocks=(1, 4))
    contexts = contexts_ending_in_last_block(rng, rows, block_size)
    table = padded(rows)
    plan = plan_shared_prefix(table, contexts, block_size, 8, 4, min_saved_fraction=0.0)
    assert plan is not None
    generator = torch.Generator().manual_seed(seed)
    shape = (next_block, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator).to(DEVICE)
    v_cache = torch.randn(shape, generator=generator).to(DEVICE)
    query = torch.randn(len(rows), num_kv_heads * group, head_dim, generator=generator).to(DEVICE)
    args = attention_args(query, k_cache, v_cache, table, contexts, 0.25)
    prefix = to_device(plan, 8, max_plan_tiles(len(rows), 8, 4), DEVICE)
    out = paged_attention(*args, shared_prefix=prefix)
    torch.testing.assert_close(out, paged_attention_ref(*args), atol=1e-5, rtol=1e-5)
