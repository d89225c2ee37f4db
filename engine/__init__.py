"""batchgen's GPU engine: continuous batching over a paged KV cache with prefix caching."""

from engine.config import (
    CacheConfig,
    EngineConfig,
    KVCacheDtype,
    ModelConfig,
    SchedulerConfig,
    SpeculativeConfig,
    SpeculativeMethod,
)
from engine.errors import RequestError, UnsupportedModelError
from engine.llm import LLM, GenerationRequest
from engine.metrics import RunMetrics
from engine.outputs import Completion
from engine.request import FinishReason, TokenLogprob
from engine.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "CacheConfig",
    "Completion",
    "EngineConfig",
    "FinishReason",
    "GenerationRequest",
    "KVCacheDtype",
    "ModelConfig",
    "RequestError",
    "RunMetrics",
    "SamplingParams",
    "SchedulerConfig",
    "SpeculativeConfig",
    "SpeculativeMethod",
    "TokenLogprob",
    "UnsupportedModelError",
]
