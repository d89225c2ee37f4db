"""The Triton SiLU-and-mul kernel against its torch reference."""

import pytest
import torch

from kernels.activation import silu_and_mul, silu_and_mul_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1.5e-2}


def _check(shape: tuple[int, ...], dtype: torch.dtype, device: str = DEVICE) -> None:
    generator = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=generator)).to(dtype=dtype, device=device)
    out = silu_and_mul(x)
    expected = silu_and_mul_ref(x)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_silu_and_mul_matches_reference(dtype: torch.dtype) -> None:
    _check((5, 2 * 40), dtype)


def test_silu_and_mul_matches_reference_when_rows_span_several_programs() -> None:
    _check((2, 2 * 1100), torch.float32)


@pytest.mark.gpu
def test_silu_and_mul_matches_reference_at_real_sizes_in_bf16() -> None:
    _check((4096, 2 * 14336), torch.bfloat16, device="cuda")
