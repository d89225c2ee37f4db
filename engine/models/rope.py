"""Rotary frequencies for the rope scalings the Llama family uses."""

from __future__ import annotations

import math

import torch

from engine.config import ModelConfig, RopeScaling


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """[head_dim / 2] fp32 inverse frequencies, scaled as the model's config asks."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    params = dict(config.rope_scaling_params)
    if config.rope_scaling is RopeScaling.LINEAR:
        return inv_freq / params["factor"]
    if config.rope_scaling is RopeScaling.LLAMA3:
        return _llama3_scaled(inv_freq, params)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, params: dict[str, float]) -> torch.Tensor:
    """Llama 3.1 long-context scaling: long wavelengths divided by factor, short ones kept,
    the band between blended linearly in 1/wavelength."""
    factor = params["factor"]
    low = params.get("low_freq_factor", 1.0)
    high = params.get("high_freq_factor", 4.0)
    original_len = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    long_wave = wavelen > original_len / low
    short_wave = wavelen < original_len / high
    scaled = torch.where(long_wave, inv_freq / factor, inv_freq)
    blend = (original_len / wavelen - low) / (high - low)
    blended = (1 - blend) * scaled / factor + blend * scaled
    return torch.where(~long_wave & ~short_wave, blended, scaled)


def cos_sin_cache(config: ModelConfig, max_positions: int, device: torch.device) -> torch.Tensor:
    """[max_positions, head_dim] fp32: cos(pos * inv_freq) then sin(pos * inv_freq)."""
    inv_freq = inverse_frequencies(config)
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)
