"""Engine configuration: frozen dataclasses, one per concern, validated on construction.

Nothing here reads files or probes a device; `ModelConfig.from_pretrained` and the engine's
factories do that, so tests can build every config by hand.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import UnsupportedModelError


class KVCacheDtype(enum.Enum):
    AUTO = "auto"  # the model's dtype
    INT8 = "int8"


class RopeScaling(enum.Enum):
    DEFAULT = "default"
    LINEAR = "linear"
    LLAMA3 = "llama3"


SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-family model (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling.DEFAULT
    rope_scaling_params: tuple[tuple[str, float], ...] = ()
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def param_counts(self) -> dict[str, int]:
        """Parameter counts: the layers' matmul weights, the lm_head, the embeddings."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * i
        return {
            "layers": per_layer * self.num_hidden_layers,
            "lm_head": self.vocab_size * h,
            "embed": self.vocab_size * h,
        }

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {self.architecture!r} is not supported; supported: "
                f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def max_model_len(self) -> int:
        """Longest sequence the engine serves: the context, capped by a sliding window
        (attention over a window is not implemented, so longer sequences would be wrong)."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @classmethod
    def from_hf_config(cls, hf: Any) -> ModelConfig:
        """Build from a transformers PretrainedConfig (or anything with the same attributes)."""
        architectures = getattr(hf, "architectures", None) or []
        architecture = architectures[0] if architectures else f"<{hf.model_type}>"
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {architecture!r} is not supported; supported: "
                f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        rope = _rope_parameters(hf)
        rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
        try:
            scaling = RopeScaling(rope_type)
        except ValueError:
            raise UnsupportedModelError(
                f"rope scaling {rope_type!r} of {architecture} is not supported; supported: "
                f"{', '.join(s.value for s in RopeScaling)}"
            ) from None
        params = tuple(
            sorted(
                (k, float(v))
                for k, v in rope.items()
                if isinstance(v, int | float) and k != "rope_theta"
            )
        )
        eos = getattr(hf, "eos_token_id", None)
        eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))
        heads = hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
        window = getattr(hf, "sliding_window", None)
        if getattr(hf, "use_sliding_window", True) is False:
            window = None
        return cls(
            architecture=architecture,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_hidden_layers=hf.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(hf, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            max_position_embeddings=hf.max_position_embeddings,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))),
            rope_scaling=scaling,
            rope_scaling_params=params,
            attention_bias=architecture == "Qwen2ForCausalLM"
            or bool(getattr(hf, "attention_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            sliding_window=window,
            eos_token_ids=eos_ids,
        )


def _rope_parameters(hf: Any) -> dict[str, Any]:
    """transformers 5 keeps rope settings in `rope_parameters`; older configs in rope_scaling."""
    params = getattr(hf, "rope_parameters", None)
    if isinstance(params, dict):
        return dict(params)
    merged: dict[str, Any] = {"rope_theta": getattr(hf, "rope_theta", 10000.0)}
    scaling = getattr(hf, "rope_scaling", None)
    if isinstance(scaling, dict):
        merged.update(scaling)
    return merged


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache. num_blocks None means: size it from free memory at start."""

    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_dtype: KVCacheDtype = KVCacheDtype.AUTO
    enable_prefix_caching: bool = True
    # Decode steps where many sequences hold the same prefix blocks read them once per tile of
    # sequences (Triton kernels only; see engine/shared_prefix.py).
    shared_prefix_attention: bool = True
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if not isinstance(self.kv_cache_dtype, KVCacheDtype):
            raise ValueError(f"kv_cache_dtype must be a KVCacheDtype, got {self.kv_cache_dtype!r}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching: every step spends at most max_num_batched_tokens tokens."""

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens <= 0:
            raise ValueError(
                f"max_num_batched_tokens must be positive, got {self.max_num_batched_tokens}"
            )
        if self.max_num_seqs <= 0:
            raise ValueError(f"max_num_seqs must be positive, got {self.max_num_seqs}")


class SpeculativeMethod(enum.Enum):
    NGRAM = "ngram"  # prompt lookup: continue an earlier occurrence of the latest n-gram
    DRAFT = "draft"  # a smaller model with the same tokenizer


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding: propose num_speculative_tokens per decoding sequence, verify them
    in one target pass. It is used only while at most max_batch_size sequences decode: past
    that a step is compute-bound and verifying rejected drafts costs more than it saves."""

    method: SpeculativeMethod = SpeculativeMethod.NGRAM
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    draft_model: str | None = None
    max_batch_size: int = 32
    verify_cost_ratio: float = 1.5  # verify-step time / plain-step time (H100, SmolLM2: ~1.5)
    # one draft-model step's time / a plain target step's; None: estimated from the two models'
    # shapes (H100, Qwen2.5 0.5B for 1.5B at batch 1-16: ~0.6 measured)
    draft_cost_ratio: float | None = None
    # Per-sequence draft length: after a rejection a sequence drafts only as many tokens as it
    # got accepted + 1, doubling (up to num_speculative_tokens) after each fully accepted draft.
    # Fewer rejected drafts per verify step; never more tokens per step.
    adaptive_draft_length: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.method, SpeculativeMethod):
            raise ValueError(f"speculative method must be ngram or draft, got {self.method!r}")
        if self.num_speculative_tokens < 1:
            raise ValueError(
                f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}"
            )
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(
                "prompt_lookup_min/prompt_lookup_max must satisfy 1 <= min <= max, got "
                f"{self.prompt_lookup_min}/{self.prompt_lookup_max}"
            )
        if self.method is SpeculativeMethod.DRAFT and not self.draft_model:
            raise ValueError("draft_model is required when the speculative method is draft")
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.verify_cost_ratio < 1.0:
            raise ValueError(f"verify_cost_ratio must be >= 1, got {self.verify_cost_ratio}")
        if self.draft_cost_ratio is not None and self.draft_cost_ratio < 0:
            raise ValueError(f"draft_cost_ratio must be >= 0, got {self.draft_cost_ratio}")


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig | None = None
    dtype: torch.dtype = torch.bfloat16
    device: str = "cpu"
    seed: int = 0
    # Schedule step N+1 while step N runs (engine/llm_engine.py). None: on for CUDA devices.
    # Off whenever speculative decoding is configured.
    overlap_scheduling: bool | None = None
