"""The Triton paged attention against its torch reference, over plain and INT8 caches."""

from dataclasses import dataclass

import pytest
import torch

from kernels.kv_store import (
    gather_kv_ref,
    quantize_int8_ref,
    slot_major_values,
    to_head_major_scales,
    to_slot_major,
)
from kernels.paged_attention import paged_attention, paged_attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1.5e-2}
BLOCK = 4  # cache block size of the CPU tests


@dataclass
class Batch:
    query: torch.Tensor  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, -1 past the end
    cu_query_lens: torch.Tensor  # [num_seqs + 1] int32
    context_lens: torch.Tensor  # [num_seqs] int32
    scale: float

    def args(self) -> tuple:
        return (
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.cu_query_lens,
            self.context_lens,
            self.scale,
        )


def make_batch(
    seqs: list[tuple[int, int]],
    num_kv_heads: int,
    group: int,
    dtype: torch.dtype,
    *,
    head_dim: int = 16,
    block_size: int = BLOCK,
    num_padding_rows: int = 0,
    device: str = DEVICE,
) -> Batch:
    """A batch of (context_len, query_len) sequences over a cache of seeded random rows whose
    blocks are handed out in shuffled order, with spare blocks of junk in between."""
    generator = torch.Generator().manual_seed(0)
    blocks_per_seq = [-(-context_len // block_size) for context_len, _ in seqs]
    num_blocks = 2 * sum(blocks_per_seq) + 1
    order = torch.randperm(num_blocks, generator=generator)
    block_tables = torch.full((len(seqs), max(blocks_per_seq)), -1, dtype=torch.int32)
    used = 0
    for s, n in enumerate(blocks_per_seq):
        block_tables[s, :n] = order[used : used + n]
        used += n
    query_lens = torch.tensor([query_len for _, query_len in seqs])
    cu_query_lens = torch.cat((torch.zeros(1, dtype=torch.long), query_lens.cumsum(0)))
    num_tokens = int(cu_query_lens[-1]) + num_padding_rows
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    query = torch.randn(num_tokens, num_kv_heads * group, head_dim, generator=generator)
    k_cache = torch.randn(cache_shape, generator=generator)
    v_cache = torch.randn(cache_shape, generator=generator)
    return Batch(
        query=query.to(dtype=dtype, device=device),
        k_cache=k_cache.to(dtype=dtype, device=device),
        v_cache=v_cache.to(dtype=dtype, device=device),
        block_tables=block_tables.to(device),
        cu_query_lens=cu_query_lens.to(dtype=torch.int32, device=device),
        context_lens=torch.tensor([c for c, _ in seqs], dtype=torch.int32, device=device),
        scale=head_dim**-0.5,
    )


def quantized(
    batch: Batch, head_major_scales: bool = True
) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """The same batch over an INT8 copy of its cache, with the per-token-per-head scales, laid
    out as the engine lays them out (kernels/kv_store.py): scales head-major (unless
    head_major_scales is False), value codes slot-major at 16- and 32-slot blocks."""
    k_codes, k_scale = quantize_int8_ref(batch.k_cache)
    v_codes, v_scale = quantize_int8_ref(batch.v_cache)
    if slot_major_values(torch.int8, v_codes.shape[1]):
        v_codes = to_slot_major(v_codes)
    if head_major_scales:
        k_scale, v_scale = to_head_major_scales(k_scale), to_head_major_scales(v_scale)
    int8_batch = Batch(**{**batch.__dict__, "k_cache": k_codes, "v_cache": v_codes})
    return int8_batch, k_scale, v_scale


def step_kv(batch: Batch) -> dict[str, torch.Tensor]:
    """The key / value rows a step would have written for its queries (as the engine passes
    them): each chunk's tokens read from the batch's unquantized cache; padding rows junk."""
    rows = {"key": [], "value": []}
    cu, ctx = batch.cu_query_lens.tolist(), batch.context_lens.tolist()
    for s, context_len in enumerate(ctx):
        for name, cache in (("key", batch.k_cache), ("value", batch.v_cache)):
            gathered = gather_kv_ref(cache, None, batch.block_tables[s], context_len, cache.dtype)
            rows[name].append(gathered[context_len - (cu[s + 1] - cu[s]) :])
    padding = batch.query.shape[0] - cu[-1]
    junk = torch.full((padding, *batch.k_cache.shape[2:]), 7.0, dtype=batch.k_cache.dtype)
    return {
        name: torch.cat([*parts, junk.to(batch.k_cache.device)]) for name, parts in rows.items()
    }


def assert_matches_reference(
    batch: Batch, *scales: torch.Tensor, num_decode_seqs: int = 0, **fresh: torch.Tensor
) -> torch.Tensor:
    out = paged_attention(*batch.args(), *scales, num_decode_seqs=num_decode_seqs, **fresh)
    expected = paged_attention_ref(*batch.args(), *scales, **fresh)
    assert out.dtype == batch.query.dtype and out.shape == batch.query.shape
    tol = TOLERANCE[batch.query.dtype]
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    return out


# Long enough for several K/V tiles of every tile config, so the online softmax rescales.
MANY = 300
# Decodes whose contexts are 1, block-1, block, block+1 and many blocks long.
RAGGED_DECODES = [(1, 1), (BLOCK - 1, 1), (BLOCK, 1), (BLOCK + 1, 1), (MANY, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 4], ids=["mha", "gqa4"])
def test_paged_attention_matches_reference_for_ragged_decodes(
    group: int, dtype: torch.dtype
) -> None:
    assert_matches_reference(make_batch(RAGGED_DECODES, num_kv_heads=2, group=group, dtype=dtype))


def test_paged_attention_matches_reference_when_group_size_is_not_a_power_of_two() -> None:
    batch = make_batch([(9, 1), (5, 3), (13, 13)], num_kv_heads=2, group=3, dtype=torch.float32)
    assert_matches_reference(batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_paged_attention_matches_reference_for_prefill_chunks_after_a_cached_prefix(
    dtype: torch.dtype,
) -> None:
    # A whole prompt, a chunk after a prefix ending mid-block, a long chunk crossing many
    # blocks and several query blocks after a block-aligned prefix.
    seqs = [(7, 7), (11, 5), (BLOCK * 3 + 40, 40)]
    assert_matches_reference(make_batch(seqs, num_kv_heads=2, group=2, dtype=dtype))


def test_paged_attention_matches_reference_for_mixed_decodes_and_prefills_with_padding_rows() -> (
    None
):
    seqs = [(BLOCK + 1, 1), (BLOCK * 2, 6), (1, 1), (9, 0), (BLOCK - 1, BLOCK - 1), (MANY, 1)]
    batch = make_batch(seqs, num_kv_heads=2, group=4, dtype=torch.float32, num_padding_rows=3)
    out = assert_matches_reference(batch)
    assert torch.equal(out[-3:], torch.zeros_like(out[-3:]))


# A mixed step as the scheduler lays it out: decodes first (ragged contexts), then prefill
# chunks, then padding rows.
DECODES_FIRST = [*RAGGED_DECODES, (BLOCK * 2, 6), (BLOCK - 1, BLOCK - 1), (40, 33)]


@pytest.mark.parametrize("int8", [False, True], ids=["plain_cache", "int8_cache"])
def test_a_mixed_steps_leading_decodes_run_in_a_launch_of_their_own(int8: bool) -> None:
    batch = make_batch(
        DECODES_FIRST, num_kv_heads=2, group=4, dtype=torch.float32, num_padding_rows=2
    )
    scales: tuple[torch.Tensor, ...] = ()
    if int8:
        batch, k_scale, v_scale = quantized(batch)
        scales = (k_scale, v_scale)
    decodes = len(RAGGED_DECODES)
    split = assert_matches_reference(batch, *scales, num_decode_seqs=decodes)
    one_launch = paged_attention(*batch.args(), *scales)
    torch.testing.assert_close(split, one_launch, atol=1e-5, rtol=1e-5)
    assert torch.equal(split[-2:], torch.zeros_like(split[-2:]))


def test_paged_attention_matches_reference_when_a_chunk_in_a_decode_batch_spans_query_blocks() -> (
    None
):
    # Mostly decodes, so the kernel takes its small tiles (4 tokens x 4 heads); the 6-token
    # chunk then spans two query blocks that do not start on a multiple of 4 in the batch.
    seqs = [(1, 1), (9, 1), (12, 6), (MANY, 1), (5, 1), (6, 1), (7, 1)]
    assert_matches_reference(make_batch(seqs, num_kv_heads=2, group=4, dtype=torch.float32))


def test_paged_attention_matches_reference_for_cuda_graph_padding_sequences() -> None:
    # A decode graph padded to 5 sequences: the last two have no query and no context, and
    # their rows of query come back as zeros.
    seqs = [(BLOCK + 1, 1), (MANY, 1), (2, 1), (0, 0), (0, 0)]
    batch = make_batch(seqs, num_kv_heads=2, group=4, dtype=torch.float16, num_padding_rows=2)
    out = assert_matches_reference(batch)
    assert torch.equal(out[-2:], torch.zeros_like(out[-2:]))


def test_paged_attention_matches_reference_when_block_table_is_shuffled() -> None:
    batch = make_batch([(23, 1), (17, 6)], num_kv_heads=1, group=4, dtype=torch.float32)
    for s, context_len in enumerate(batch.context_lens.tolist()):
        table = batch.block_tables[s, : -(-context_len // BLOCK)]
        assert not torch.equal(table, table.sort().values), "make_batch must shuffle blocks"
    assert_matches_reference(batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_major_scales", [True, False], ids=["head_major", "row_major"])
def test_paged_attention_over_int8_cache_matches_reference_on_the_same_int8_cache(
    dtype: torch.dtype, head_major_scales: bool
) -> None:
    seqs = [(BLOCK + 1, 1), (MANY, 1), (11, 5), (BLOCK - 1, BLOCK - 1)]
    batch = make_batch(seqs, num_kv_heads=2, group=4, dtype=dtype, num_padding_rows=1)
    int8_batch, k_scale, v_scale = quantized(batch, head_major_scales)
    assert k_scale.stride(1) == (1 if head_major_scales else 2)
    assert_matches_reference(int8_batch, k_scale, v_scale)


# Blocks of 16 slots, the engine's default: INT8 values are then slot-major. Contexts end
# before, at and after block boundaries, and chunks follow prefixes that end mid-block, so
# tiles read whole blocks whose last slots are past the end (random codes, weight 0).
SLOT_MAJOR_SEQS = [(1, 1), (15, 1), (16, 1), (17, 1), (MANY, 1), (40, 7), (16 * 3 + 5, 21)]


@pytest.mark.parametrize("num_decode_seqs", [0, 5], ids=["one_launch", "split"])
def test_paged_attention_over_slot_major_int8_values_matches_reference(
    num_decode_seqs: int,
) -> None:
    batch = make_batch(
        SLOT_MAJOR_SEQS,
        num_kv_heads=2,
        group=4,
        dtype=torch.float32,
        block_size=16,
        num_padding_rows=2,
    )
    int8_batch, k_scale, v_scale = quantized(batch)
    assert int8_batch.v_cache.stride(1) == 1, "values must be slot-major at 16-slot blocks"
    assert_matches_reference(int8_batch, k_scale, v_scale, num_decode_seqs=num_decode_seqs)


@pytest.mark.parametrize("block_size", [BLOCK, 16])
@pytest.mark.parametrize("num_decode_seqs", [0, 5], ids=["one_launch", "split"])
def test_int8_chunks_that_read_their_own_keys_unquantized_match_reference(
    block_size: int, num_decode_seqs: int
) -> None:
    # Decodes first, then chunks after prefixes that end mid-block and whole prompts.
    seqs = [*RAGGED_DECODES, (40, 7), (16 * 3 + 5, 21), (BLOCK - 1, BLOCK - 1), (33, 33)]
    batch = make_batch(
        seqs,
        num_kv_heads=2,
        group=4,
        dtype=torch.float32,
        block_size=block_size,
        num_padding_rows=2,
    )
    fresh = step_kv(batch)
    int8_batch, k_scale, v_scale = quantized(batch)
    out = assert_matches_reference(
        int8_batch, k_scale, v_scale, num_decode_seqs=num_decode_seqs, **fresh
    )
    assert torch.equal(out[-2:], torch.zeros_like(out[-2:]))
    # Whole prompts then see no quantization at all; decodes still read their codes.
    exact = paged_attention_ref(*batch.args())
    quantized_only = paged_attention_ref(*int8_batch.args(), k_scale, v_scale)
    cu = batch.cu_query_lens.tolist()
    for s, (context_len, query_len) in enumerate(seqs):
        rows = slice(cu[s], cu[s + 1])
        if context_len == query_len > 1:
            torch.testing.assert_close(out[rows], exact[rows], atol=1e-5, rtol=1e-5)
        if query_len == 1:
            torch.testing.assert_close(out[rows], quantized_only[rows], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, quantized_only, atol=1e-3, rtol=1e-3)


def test_int8_chunks_over_a_prefix_read_the_prefix_from_the_cache() -> None:
    # A chunk after a prefix: its own keys come from key / value, the prefix's from the
    # codes; junk in key / value's prefix positions would not be seen, junk in the chunk
    # positions would.
    batch = make_batch([(40, 7)], num_kv_heads=2, group=4, dtype=torch.float32)
    fresh = step_kv(batch)
    int8_batch, k_scale, v_scale = quantized(batch)
    out = paged_attention(*int8_batch.args(), k_scale, v_scale, **fresh)
    doubled = paged_attention(
        *int8_batch.args(), k_scale, v_scale, key=fresh["key"], value=2 * fresh["value"]
    )
    assert not torch.allclose(out, doubled, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(
        out, paged_attention_ref(*int8_batch.args(), k_scale, v_scale, **fresh)
    )


@pytest.mark.parametrize("num_decode_seqs", [0, 2], ids=["one_launch", "split"])
def test_chunks_over_a_16_or_32_bit_cache_read_their_own_keys_from_key_and_value(
    num_decode_seqs: int,
) -> None:
    # The cache holds the same rows as key / value, so the result is the reference's; junk in
    # the chunks' value rows shows that the dense loop over them is what ran.
    seqs = [(BLOCK + 3, 1), (9, 1), (40, 7), (33, 33)]
    batch = make_batch(seqs, num_kv_heads=2, group=4, dtype=torch.float32, num_padding_rows=2)
    fresh = step_kv(batch)
    assert_matches_reference(batch, num_decode_seqs=num_decode_seqs, **fresh)
    out = paged_attention(*batch.args(), num_decode_seqs=num_decode_seqs, **fresh)
    doubled = paged_attention(
        *batch.args(),
        num_decode_seqs=num_decode_seqs,
        key=fresh["key"],
        value=2 * fresh["value"],
    )
    cu = batch.cu_query_lens.tolist()
    decode_rows, chunk_rows = slice(0, cu[2]), slice(cu[2], cu[-1])
    torch.testing.assert_close(doubled[decode_rows], out[decode_rows])  # decodes read the cache
    assert not torch.allclose(doubled[chunk_rows], out[chunk_rows], atol=1e-3, rtol=1e-3)


def test_paged_attention_over_int8_cache_stays_close_to_the_unquantized_cache() -> None:
    seqs = [(MANY, 1), (30, 12), (BLOCK + 1, 1)]
    batch = make_batch(seqs, num_kv_heads=2, group=2, dtype=torch.float32)
    int8_batch, k_scale, v_scale = quantized(batch)
    out = paged_attention(*int8_batch.args(), k_scale, v_scale)
    exact = paged_attention_ref(*batch.args())
    # Per-row INT8 steps are max|x| / 254 (~1% of a unit-variance row's range).
    torch.testing.assert_close(out, exact, atol=5e-2, rtol=5e-2)
    assert (out - exact).abs().mean().item() < 1e-2


def _real_size_seqs(mixed: bool) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(0)
    context_lens = torch.randint(1, 2049, (64,), generator=generator).tolist()
    context_lens[:5] = [1, 15, 16, 17, 2048]
    if not mixed:
        return [(c, 1) for c in context_lens]
    # Every fourth sequence runs a prefill chunk of up to 512 tokens after its cached prefix.
    return [
        (c, min(c, 1 + (37 * s) % 512) if s % 4 == 0 else 1) for s, c in enumerate(context_lens)
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("mixed", [False, True, "decodes_first"], ids=["decode", "mixed", "split"])
@pytest.mark.parametrize("int8", [False, True], ids=["bf16_cache", "int8_cache"])
def test_paged_attention_matches_reference_at_real_sizes_in_bf16(mixed, int8: bool) -> None:
    seqs = _real_size_seqs(bool(mixed))
    decodes = 0
    if mixed == "decodes_first":  # as the scheduler orders a mixed step; two launches
        seqs = sorted(seqs, key=lambda s: s[1] > 1)
        decodes = sum(1 for _, q in seqs if q == 1)
    batch = make_batch(
        seqs,
        num_kv_heads=8,
        group=4,
        dtype=torch.bfloat16,
        head_dim=128,
        block_size=16,
        num_padding_rows=8,
        device="cuda",
    )
    scales: tuple[torch.Tensor, ...] = ()
    fresh = step_kv(batch)  # as the engine passes them
    if int8:
        batch, k_scale, v_scale = quantized(batch)
        scales = (k_scale, v_scale)
    out = assert_matches_reference(batch, *scales, num_decode_seqs=decodes, **fresh)
    assert torch.equal(out[-8:], torch.zeros_like(out[-8:]))


@pytest.mark.gpu
def test_block_tables_of_any_width_share_one_compiled_kernel() -> None:
    """A step's block table is as wide as its longest sequence's block count, so its row
    stride changes from step to step; Triton would compile a variant for a stride of 1 and one
    for a multiple of 16 besides the rest (a mid-run compile cost W8 2.6 s)."""
    from kernels.paged_attention import _paged_attention_kernel

    caches = getattr(_paged_attention_kernel, "device_caches", None)
    if caches is None:
        pytest.skip("this Triton keeps no per-device kernel cache to count")
    seqs = [(16, 1)] * 6 + [(13, 1)] * 2  # one block each
    batch = make_batch(
        seqs,
        num_kv_heads=8,
        group=4,
        dtype=torch.bfloat16,
        head_dim=128,
        block_size=16,
        device="cuda",
    )
    compiled = caches[torch.cuda.current_device()][0]
    outputs, counts = [], []
    for width in (1, 48, 33, 17):
        table = torch.zeros((len(seqs), width), dtype=torch.int32, device="cuda")
        table[:, :1] = batch.block_tables[:, :1]
        wide = Batch(**{**batch.__dict__, "block_tables": table})
        outputs.append(assert_matches_reference(wide))
        counts.append(len(compiled))
    assert counts == [counts[0]] * 4, f"compiled variants after each width: {counts}"
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])
