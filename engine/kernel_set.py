"""Which implementation of each kernel the model calls: Triton on CUDA, the torch references
elsewhere. Both share one signature per kernel, so the model never branches on the device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.activation import silu_and_mul_ref
from kernels.kv_store import store_kv_ref
from kernels.paged_attention import paged_attention_ref
from kernels.rmsnorm import fused_add_rms_norm_ref, rms_norm_ref
from kernels.rotary import apply_rotary_ref


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


def kernels_for(device: torch.device) -> KernelSet:
    """The kernel set for a device."""
    return REFERENCE_KERNELS
