"""The Triton KV store (plain and INT8 quantize-on-write) against its torch reference."""

import pytest
import torch

from kernels.kv_store import (
    allocate_kv_scales,
    quantize_int8_ref,
    slot_major_values,
    store_kv,
    store_kv_ref,
    to_head_major_scales,
    to_slot_major,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(
    num_tokens: int,
    num_kv_heads: int,
    head_dim: int,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded key, value and a slot mapping over distinct shuffled slots with two padding
    tokens (slot -1)."""
    generator = torch.Generator().manual_seed(0)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=generator)[:2]] = -1
    return (
        key.to(dtype=dtype, device=device),
        value.to(dtype=dtype, device=device),
        slots.to(device),
    )


def _caches(
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str,
) -> list[torch.Tensor]:
    """k_cache, v_cache (and for INT8 k_scale, v_scale) filled with seeded junk, so a slot the
    kernel must skip is seen to keep its old contents; INT8 laid out as the engine lays it out
    (scales head-major, values slot-major at 16- and 32-slot blocks)."""
    generator = torch.Generator().manual_seed(1)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    if dtype == torch.int8:
        caches = [torch.randint(-127, 128, shape, generator=generator, dtype=torch.int8)] * 2
        scales = [torch.rand(shape[:3], generator=generator)] * 2
        caches = [t.clone().to(device) for t in caches + scales]
        caches[2:] = [to_head_major_scales(t) for t in caches[2:]]
        if slot_major_values(torch.int8, block_size):
            caches[1] = to_slot_major(caches[1])
        return caches
    return [
        torch.randn(shape, generator=generator).to(dtype=dtype, device=device) for _ in range(2)
    ]


@pytest.mark.parametrize(
    "key_dtype,cache_dtype",
    [
        (torch.float32, torch.float32),
        (torch.float16, torch.float16),
        (torch.float32, torch.float16),
    ],
)
def test_store_kv_writes_the_same_cache_as_reference(
    key_dtype: torch.dtype, cache_dtype: torch.dtype
) -> None:
    key, value, slots = _case(7, 2, 16, num_blocks=3, block_size=4, dtype=key_dtype, device=DEVICE)
    k_cache, v_cache = _caches(3, 4, 2, 16, cache_dtype, DEVICE)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    store_kv(key, value, k_cache, v_cache, slots)
    store_kv_ref(key, value, k_expected, v_expected, slots)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)


def test_store_kv_matches_reference_when_value_is_a_strided_view_of_fused_qkv() -> None:
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(5, 3 * 2 * 16, generator=generator).to(DEVICE)
    key = qkv[:, 32:64].reshape(5, 2, 16)
    value = qkv[:, 64:].reshape(5, 2, 16)
    slots = torch.tensor([3, 0, -1, 9, 6], device=DEVICE)
    k_cache, v_cache = _caches(3, 4, 2, 16, torch.float32, DEVICE)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    store_kv(key, value, k_cache, v_cache, slots)
    store_kv_ref(key, value, k_expected, v_expected, slots)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)


def _check_int8(
    key: torch.Tensor,
    value: torch.Tensor,
    slots: torch.Tensor,
    num_blocks: int,
    block_size: int,
) -> list[torch.Tensor]:
    num_kv_heads, head_dim = key.shape[1:]
    device = str(key.device)
    caches = _caches(num_blocks, block_size, num_kv_heads, head_dim, torch.int8, device)
    expected = [t.clone() for t in caches]
    store_kv(key, value, *caches[:2], slots, *caches[2:])
    store_kv_ref(key, value, *expected[:2], slots, *expected[2:])
    k_cache, v_cache, k_scale, v_scale = caches
    for got, want in ((k_cache, expected[0]), (v_cache, expected[1])):
        assert (got.int() - want.int()).abs().max().item() <= 1
    for got, want in ((k_scale, expected[2]), (v_scale, expected[3])):
        torch.testing.assert_close(got, want, atol=0, rtol=1e-6)
    return caches


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_store_kv_quantizes_to_int8_like_reference(dtype: torch.dtype) -> None:
    key, value, slots = _case(7, 2, 16, num_blocks=3, block_size=4, dtype=dtype, device=DEVICE)
    _check_int8(3 * key, value, slots, num_blocks=3, block_size=4)


def test_store_kv_quantizes_into_slot_major_values_like_reference() -> None:
    key, value, slots = _case(
        40, 2, 16, num_blocks=4, block_size=16, dtype=torch.float32, device=DEVICE
    )
    k_cache, v_cache, k_scale, _ = _check_int8(key, value, slots, num_blocks=4, block_size=16)
    assert v_cache.stride(1) == 1 and k_cache.stride(-1) == 1 and k_scale.stride(1) == 1
    written = slots[slots >= 0]
    codes, _ = quantize_int8_ref(value[slots >= 0])
    got = v_cache[written // 16, written % 16]
    assert (got.int() - codes.int()).abs().max().item() <= 1


def test_store_kv_gives_zero_rows_a_positive_scale_and_zero_codes() -> None:
    key, value, slots = _case(
        5, 2, 16, num_blocks=2, block_size=4, dtype=torch.float32, device=DEVICE
    )
    key[:, 0] = 0.0
    value[:] = 0.0
    written = slots[slots >= 0]
    k_cache, v_cache, k_scale, v_scale = _check_int8(key, value, slots, num_blocks=2, block_size=4)
    blocks, offsets = written // 4, written % 4
    assert (k_scale[blocks, offsets, 0] > 0).all() and (v_scale[blocks, offsets] > 0).all()
    assert (k_cache[blocks, offsets, 0] == 0).all() and (v_cache[blocks, offsets] == 0).all()
    assert torch.isfinite(k_scale).all() and torch.isfinite(v_scale).all()


def test_allocate_kv_scales_puts_a_heads_scales_for_a_block_side_by_side() -> None:
    k_scale, v_scale = allocate_kv_scales(3, 16, 8, "cpu")
    for scale in (k_scale, v_scale):
        assert scale.shape == (3, 16, 8) and scale.dtype == torch.float32
        assert scale.stride() == (16 * 8, 1, 16)
        assert torch.equal(scale, torch.ones(3, 16, 8))
    assert k_scale.data_ptr() != v_scale.data_ptr()


@pytest.mark.gpu
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.int8])
def test_store_kv_matches_reference_at_real_sizes(cache_dtype: torch.dtype) -> None:
    key, value, slots = _case(
        4096, 8, 128, num_blocks=512, block_size=16, dtype=torch.bfloat16, device="cuda"
    )
    if cache_dtype == torch.int8:
        _check_int8(key, value, slots, num_blocks=512, block_size=16)
        return
    k_cache, v_cache = _caches(512, 16, 8, 128, cache_dtype, "cuda")
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    store_kv(key, value, k_cache, v_cache, slots)
    store_kv_ref(key, value, k_expected, v_expected, slots)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)
