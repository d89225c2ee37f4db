"""The Triton rotary embedding against its torch reference."""

import pytest
import torch

from kernels.rotary import apply_rotary, apply_rotary_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1.5e-2}


def _cos_sin_cache(max_positions: int, head_dim: int, device: str) -> torch.Tensor:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)


def _check(
    num_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str = DEVICE,
) -> None:
    generator = torch.Generator().manual_seed(0)
    max_positions = 4 * num_tokens + 8
    query = torch.randn(num_tokens, num_heads, head_dim, generator=generator)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator)
    query, key = query.to(dtype=dtype, device=device), key.to(dtype=dtype, device=device)
    positions = torch.randint(0, max_positions, (num_tokens,), generator=generator).to(device)
    cache = _cos_sin_cache(max_positions, head_dim, device)
    query_before, key_before = query.clone(), key.clone()
    q_out, k_out = apply_rotary(query, key, positions, cache)
    q_expected, k_expected = apply_rotary_ref(query, key, positions, cache)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(q_out, q_expected, atol=tol, rtol=tol)
    torch.testing.assert_close(k_out, k_expected, atol=tol, rtol=tol)
    assert torch.equal(query, query_before) and torch.equal(key, key_before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(2, 2), (6, 2)], ids=["mha", "gqa3"])
def test_apply_rotary_matches_reference(
    num_heads: int, num_kv_heads: int, dtype: torch.dtype
) -> None:
    _check(num_tokens=5, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=16, dtype=dtype)


def test_apply_rotary_matches_reference_when_half_dim_is_not_a_power_of_two() -> None:
    _check(num_tokens=3, num_heads=2, num_kv_heads=1, head_dim=24, dtype=torch.float32)


def test_apply_rotary_matches_reference_on_strided_views_of_fused_qkv() -> None:
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(4, (4 + 2 + 2) * 16, generator=generator)
    query = qkv[:, : 4 * 16].reshape(4, 4, 16)
    key = qkv[:, 4 * 16 : 6 * 16].reshape(4, 2, 16)
    positions = torch.tensor([0, 3, 7, 2])
    cache = _cos_sin_cache(8, 16, "cpu")
    if DEVICE == "cuda":
        query, key, positions, cache = (t.cuda() for t in (query, key, positions, cache))
    q_out, k_out = apply_rotary(query, key, positions, cache)
    q_expected, k_expected = apply_rotary_ref(query, key, positions, cache)
    torch.testing.assert_close(q_out, q_expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_out, k_expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_apply_rotary_matches_reference_at_real_sizes_in_bf16() -> None:
    _check(
        num_tokens=4096,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        dtype=torch.bfloat16,
        device="cuda",
    )
