"""Counters of one engine's work, cumulative since it started (or since reset)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def mean_acceptance_length(num_accepted_tokens: int, num_verified_sequences: int) -> float:
    """Tokens emitted per sequence per verifying step (accepted drafts + 1); 0 without any."""
    if not num_verified_sequences:
        return 0.0
    return (num_accepted_tokens + num_verified_sequences) / num_verified_sequences


@dataclass
class RunMetrics:
    num_requests: int = 0
    num_errors: int = 0
    num_prompt_tokens: int = 0  # prompt tokens of accepted requests
    num_cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache
    num_computed_tokens: int = 0  # tokens run through the model (prefill, decode, recompute)
    num_generated_tokens: int = 0
    num_steps: int = 0
    num_preemptions: int = 0
    peak_blocks_used: int = 0
    num_blocks: int = 0
    prefill_seconds: float = 0.0  # wall time of steps that ran any prefill tokens
    decode_seconds: float = 0.0  # wall time of steps that only decoded
    num_shared_prefix_steps: int = 0  # decode steps that read shared prefixes once per tile
    num_shared_prefix_saved_tokens: int = 0  # KV token reads saved per layer and KV head
    # speculative decoding
    num_spec_steps: int = 0  # steps that verified drafts
    num_spec_off_steps: int = 0  # decode steps where the adaptive switch held drafts back
    num_spec_skipped_steps: int = 0  # steps whose drafts were not worth a verify step
    num_draft_tokens: int = 0  # proposed and verified
    num_accepted_tokens: int = 0
    num_verified_sequences: int = 0  # sequence-steps that verified drafts
    spec_propose_seconds: float = 0.0
    spec_verify_seconds: float = 0.0  # rejection sampling (the target pass is in the step time)

    @property
    def prefix_cache_hit_rate(self) -> float:
        return (
            self.num_cached_prompt_tokens / self.num_prompt_tokens
            if self.num_prompt_tokens
            else 0.0
        )

    @property
    def generated_tokens_per_second(self) -> float:
        seconds = self.prefill_seconds + self.decode_seconds
        return self.num_generated_tokens / seconds if seconds else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        return mean_acceptance_length(self.num_accepted_tokens, self.num_verified_sequences)

    @property
    def draft_acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["prefix_cache_hit_rate"] = self.prefix_cache_hit_rate
        values["generated_tokens_per_second"] = self.generated_tokens_per_second
        values["mean_acceptance_length"] = self.mean_acceptance_length
        values["draft_acceptance_rate"] = self.draft_acceptance_rate
        return values
