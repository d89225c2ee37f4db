"""A request (immutable input) and the sequence that carries its state through the engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.sampling_params import SamplingParams

# Stands in token_ids for a token sampled by a step whose result the host has not read yet
# (overlapped scheduling, engine/llm_engine.py): the device fills it into the next step's input.
PENDING_TOKEN = -1


class FinishReason(enum.Enum):
    STOP = "stop"  # an EOS or stop token id, or a stop string
    LENGTH = "length"  # max_tokens reached
    ERROR = "error"  # the request was invalid or could never run; see Completion.error


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(frozen=True)
class Request:
    """What the caller asked for: prompt tokens and sampling params, validated."""

    request_id: Any
    prompt_token_ids: tuple[int, ...]
    sampling_params: SamplingParams
    prompt: str | None = None
    arrival_index: int = 0


@dataclass
class TokenLogprob:
    """The sampled token's logprob and, on request, the top-n alternatives (token id -> logprob)."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass(eq=False)
class Sequence:
    """Mutable generation state of one request.

    token_ids holds prompt + generated tokens; the first num_computed_tokens of them have their
    KV in the cache (blocks listed in block_ids). Invariant:
    0 <= num_computed_tokens <= len(token_ids) and len(block_ids) * block_size >= num_computed_tokens.
    Prefill and decode are the same thing: a step runs some of the uncomputed tokens.
    """

    request: Request
    token_ids: list[int]
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    block_ids: list[int] = field(default_factory=list)
    block_table_row: int = -1  # its row in engine/block_tables.py's array (-1: none yet)
    block_hashes: list[bytes] = field(default_factory=list)  # hashes of its full blocks, in order
    num_preemptions: int = 0
    finish_reason: FinishReason | None = None
    stop_text_end: int | None = None  # where a stop string cut the text
    logprobs: list[TokenLogprob] = field(default_factory=list)
    generator: torch.Generator | None = None  # the sampler seeds it on first use
    draft_token_ids: list[int] = field(default_factory=list)  # proposed for the next step only
    num_proposed_drafts: int = 0  # speculative decoding: drafts verified so far
    num_accepted_drafts: int = 0
    max_draft_tokens: int | None = None  # per-sequence draft length (None: the config's k)

    # The request's prompt length (its tokens are a tuple): read several times per sequence
    # in every step, so kept instead of recomputed.
    num_prompt_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.request.prompt_token_ids)

    @classmethod
    def from_request(cls, request: Request) -> Sequence:
        return cls(request=request, token_ids=list(request.prompt_token_ids))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_pending_tokens(self) -> int:
        """Trailing tokens sampled on the device but not read yet (0 or 1)."""
        return 1 if self.token_ids and self.token_ids[-1] == PENDING_TOKEN else 0

    @property
    def output_token_ids(self) -> list[int]:
        """Generated tokens known on the host (a pending one excluded)."""
        return self.token_ids[self.num_prompt_tokens : self.num_tokens - self.num_pending_tokens]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
