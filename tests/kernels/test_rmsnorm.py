"""The Triton RMSNorm kernels against their torch references."""

import pytest
import torch

from kernels.rmsnorm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1.5e-2}


def _inputs(
    shape: tuple[int, ...], dtype: torch.dtype, device: str = DEVICE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(dtype=dtype, device=device)
    residual = torch.randn(shape, generator=generator).to(dtype=dtype, device=device)
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=generator)).to(dtype=dtype, device=device)
    return x, residual, weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(5, 48), (3, 4, 16)], ids=["hidden", "per_head"])
def test_rms_norm_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x, _, weight = _inputs(shape, dtype)
    out = rms_norm(x, weight, 1e-6)
    expected = rms_norm_ref(x, weight, 1e-6)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


def test_rms_norm_matches_reference_on_a_strided_view_of_fused_qkv() -> None:
    # The model's q is a reshaped column slice of the fused qkv projection: rows are not dense.
    qkv, _, weight = _inputs((3, 4 * 16 + 2 * 16), torch.float32)
    q = qkv[:, : 4 * 16].reshape(3, 4, 16)
    out = rms_norm(q, weight[:16], 1e-6)
    torch.testing.assert_close(out, rms_norm_ref(q, weight[:16], 1e-6), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_add_rms_norm_matches_reference_and_leaves_inputs_untouched(
    dtype: torch.dtype,
) -> None:
    x, residual, weight = _inputs((5, 48), dtype)
    x_before, residual_before = x.clone(), residual.clone()
    out, summed = fused_add_rms_norm(x, residual, weight, 1e-6)
    expected_out, expected_summed = fused_add_rms_norm_ref(x, residual, weight, 1e-6)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(summed, expected_summed, atol=0, rtol=0)
    torch.testing.assert_close(out, expected_out, atol=tol, rtol=tol)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4096, 4096), (1000, 32, 128)], ids=["hidden", "per_head"])
def test_rms_norm_matches_reference_at_real_sizes_in_bf16(shape: tuple[int, ...]) -> None:
    x, residual, weight = _inputs(shape, torch.bfloat16, "cuda")
    tol = TOLERANCE[torch.bfloat16]
    torch.testing.assert_close(
        rms_norm(x, weight, 1e-5), rms_norm_ref(x, weight, 1e-5), atol=tol, rtol=tol
    )
    out, summed = fused_add_rms_norm(x, residual, weight, 1e-5)
    expected_out, expected_summed = fused_add_rms_norm_ref(x, residual, weight, 1e-5)
    torch.testing.assert_close(summed, expected_summed, atol=0, rtol=0)
    torch.testing.assert_close(out, expected_out, atol=tol, rtol=tol)
