"""Which implementation of each kernel the model calls: Triton on CUDA, the torch references
elsewhere. Both share one signature per kernel, so the model never branches on the device.

The environment variable BATCHGEN_KERNELS overrides the choice by device:

    unset or "auto"   Triton kernels on a CUDA device, torch references otherwise
    "reference"       torch references everywhere (e.g. to rule out a kernel bug on the GPU)
    "triton"          Triton kernels everywhere (on CPU only under TRITON_INTERPRET=1)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.activation import silu_and_mul, silu_and_mul_ref
from kernels.kv_store import store_kv, store_kv_ref
from kernels.paged_attention import paged_attention, paged_attention_ref
from kernels.rmsnorm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref
from kernels.rotary import apply_rotary, apply_rotary_ref

KERNELS_ENV_VAR = "BATCHGEN_KERNELS"


@dataclass(frozen=True)
class KernelSet:
    name: str
    rms_norm: Callable[..., torch.Tensor]
    fused_add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    apply_rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[..., torch.Tensor]
    store_kv: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]


REFERENCE_KERNELS = KernelSet(
    name="torch-reference",
    rms_norm=rms_norm_ref,
    fused_add_rms_norm=fused_add_rms_norm_ref,
    apply_rotary=apply_rotary_ref,
    silu_and_mul=silu_and_mul_ref,
    store_kv=store_kv_ref,
    paged_attention=paged_attention_ref,
)

TRITON_KERNELS = KernelSet(
    name="triton",
    rms_norm=rms_norm,
    fused_add_rms_norm=fused_add_rms_norm,
    apply_rotary=apply_rotary,
    silu_and_mul=silu_and_mul,
    store_kv=store_kv,
    paged_attention=paged_attention,
)

# Values of BATCHGEN_KERNELS that force one set regardless of the device.
FORCED_KERNEL_SETS: dict[str, KernelSet] = {
    "reference": REFERENCE_KERNELS,
    "triton": TRITON_KERNELS,
}


def kernels_for(device: torch.device) -> KernelSet:
    """The kernel set for a device, unless BATCHGEN_KERNELS forces one (see the module doc)."""
    choice = os.environ.get(KERNELS_ENV_VAR, "auto").strip().lower() or "auto"
    if choice in FORCED_KERNEL_SETS:
        return FORCED_KERNEL_SETS[choice]
    if choice != "auto":
        allowed = ", ".join(["auto", *FORCED_KERNEL_SETS])
        raise ValueError(f"{KERNELS_ENV_VAR}={choice!r}: expected one of {allowed}")
    return TRITON_KERNELS if device.type == "cuda" else REFERENCE_KERNELS
