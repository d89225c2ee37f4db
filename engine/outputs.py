"""What the engine hands back for each request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.request import FinishReason, TokenLogprob


@dataclass(frozen=True)
class Completion:
    """One finished request. On error, finish_reason is ERROR, error names the field at fault,
    and token_ids/text are empty."""

    request_id: Any
    index: int  # position of the request in the caller's input
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None
