"""Real model shapes for benchmarks, as engine ModelConfigs and transformers configs."""

from __future__ import annotations

from typing import Any

from engine.config import ModelConfig, RopeScaling

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope=LLAMA3_ROPE,
        tie_word_embeddings=False,
    ),
    "llama-3.2-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope={**LLAMA3_ROPE, "factor": 32.0},
        tie_word_embeddings=True,
    ),
}


def engine_config(name: str, max_model_len: int) -> ModelConfig:
    """The shape as an engine ModelConfig; max_model_len caps the context (and the rope table)."""
    s = dict(SHAPES[name])
    rope = s.pop("rope")
    s["max_position_embeddings"] = max_model_len
    params = tuple(sorted((k, float(v)) for k, v in rope.items() if k != "rope_type"))
    return ModelConfig(
        architecture="LlamaForCausalLM",
        rope_scaling=RopeScaling(rope["rope_type"]),
        rope_scaling_params=params,
        eos_token_ids=(128001,),
        **s,
    )


def hf_config(name: str, max_model_len: int) -> Any:
    from transformers import LlamaConfig

    s = dict(SHAPES[name])
    rope = s.pop("rope")
    s["max_position_embeddings"] = max_model_len
    theta = s.pop("rope_theta")
    return LlamaConfig(
        **s, rope_parameters={**rope, "rope_theta": theta}, architectures=["LlamaForCausalLM"]
    )
