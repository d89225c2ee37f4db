"""The Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM) over the paged KV cache.

Weights follow Hugging Face names, except that q/k/v and gate/up projections are stored fused
(`qkv_proj`, `gate_up_proj`); the loader concatenates them. All kernel calls go through a
KernelSet, so the same module runs the Triton path on CUDA and the torch references on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.forward_batch import ForwardBatch, LayerKVCache
from engine.kernel_set import KernelSet
from engine.models.rope import cos_sin_cache


def _param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        qkv_size = self.q_size + 2 * self.kv_size
        self.qkv_proj_weight = _param(qkv_size, config.hidden_size, dtype=dtype, device=device)
        self.qkv_proj_bias = (
            _param(qkv_size, dtype=dtype, device=device) if config.attention_bias else None
        )
        self.o_proj_weight = _param(config.hidden_size, self.q_size, dtype=dtype, device=device)
        self.q_norm_weight = (
            _param(self.head_dim, dtype=dtype, device=device) if config.qk_norm else None
        )
        self.k_norm_weight = (
            _param(self.head_dim, dtype=dtype, device=device) if config.qk_norm else None
        )

    def forward(
        self,
        hidden: torch.Tensor,  # [num_tokens, hidden_size]
        batch: ForwardBatch,
        kv: LayerKVCache,
        cos_sin: torch.Tensor,
        kernels: KernelSet,
    ) -> torch.Tensor:
        qkv = F.linear(hidden, self.qkv_proj_weight, self.qkv_proj_bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)  # [num_tokens, num_heads, head_dim]
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)  # [num_tokens, num_kv_heads, head_dim]
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm_weight is not None and self.k_norm_weight is not None:
            q = kernels.rms_norm(q, self.q_norm_weight, self.eps)
            k = kernels.rms_norm(k, self.k_norm_weight, self.eps)
        q, k = kernels.apply_rotary(q, k, batch.positions, cos_sin)
        kernels.store_kv(k, v, kv.k_cache, kv.v_cache, batch.slot_mapping, kv.k_scale, kv.v_scale)
        out = kernels.paged_attention(
            q,
            kv.k_cache,
            kv.v_cache,
            batch.block_tables,
            batch.cu_query_lens,
            batch.context_lens,
            self.scale,
            kv.k_scale,
            kv.v_scale,
            shared_prefix=batch.shared_prefix,
            num_decode_seqs=batch.num_decode_seqs,
            key=k,
            value=v,
        )
        return F.linear(out.reshape(-1, self.q_size), self.o_proj_weight)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = Attention(config, dtype, device)
        hidden, inter = config.hidden_size, config.intermediate_size
        self.input_layernorm_weight = _param(hidden, dtype=dtype, device=device)
        self.post_attention_layernorm_weight = _param(hidden, dtype=dtype, device=device)
        self.gate_up_proj_weight = _param(2 * inter, hidden, dtype=dtype, device=device)
        self.down_proj_weight = _param(hidden, inter, dtype=dtype, device=device)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        batch: ForwardBatch,
        kv: LayerKVCache,
        cos_sin: torch.Tensor,
        kernels: KernelSet,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's output before the residual add, the running residual)."""
        if residual is None:
            residual = hidden
            hidden = kernels.rms_norm(hidden, self.input_layernorm_weight, self.eps)
        else:
            hidden, residual = kernels.fused_add_rms_norm(
                hidden, residual, self.input_layernorm_weight, self.eps
            )
        hidden = self.self_attn(hidden, batch, kv, cos_sin, kernels)
        hidden, residual = kernels.fused_add_rms_norm(
            hidden, residual, self.post_attention_layernorm_weight, self.eps
        )
        gate_up = F.linear(hidden, self.gate_up_proj_weight)
        hidden = F.linear(kernels.silu_and_mul(gate_up), self.down_proj_weight)
        return hidden, residual


class LlamaForCausalLM(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        kernels: KernelSet,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.config = config
        self.kernels = kernels
        self.eps = config.rms_norm_eps
        self.embed_tokens_weight = _param(
            config.vocab_size, config.hidden_size, dtype=dtype, device=device
        )
        self.layers = nn.ModuleList(
            DecoderLayer(config, dtype, device) for _ in range(config.num_hidden_layers)
        )
        self.norm_weight = _param(config.hidden_size, dtype=dtype, device=device)
        self.lm_head_weight = (
            self.embed_tokens_weight
            if config.tie_word_embeddings
            else _param(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        )
        self.register_buffer(
            "cos_sin", cos_sin_cache(config, config.max_model_len, device), persistent=False
        )

    def forward(self, batch: ForwardBatch, kv_caches: list[LayerKVCache]) -> torch.Tensor:
        """Run every token of batch, writing its KV; returns hidden states of the
        logits_indices rows after the final norm: [num_sampled, hidden_size]."""
        hidden = F.embedding(batch.input_ids, self.embed_tokens_weight)
        residual: torch.Tensor | None = None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, batch, kv, self.cos_sin, self.kernels)
        assert residual is not None
        hidden = hidden[batch.logits_indices]
        residual = residual[batch.logits_indices]
        hidden, _ = self.kernels.fused_add_rms_norm(hidden, residual, self.norm_weight, self.eps)
        return hidden

    def compute_logits(self, hidden: torch.Tensor, float32: bool = True) -> torch.Tensor:
        """[num_sampled, hidden_size] -> [num_sampled, vocab_size], fp32 unless not float32
        (then in the model's dtype)."""
        logits = F.linear(hidden, self.lm_head_weight)
        return logits.float() if float32 else logits
