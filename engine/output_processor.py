"""Text side of generation: stop strings (which need detokenized text) and final Completions."""

from __future__ import annotations

from typing import Any

from engine.outputs import Completion
from engine.request import FinishReason, Sequence


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._checked_chars: dict[int, int] = {}  # id(seq) -> text length already searched

    def decode(self, token_ids: list[int]) -> str:
        """Text of token_ids; empty when the engine runs without a tokenizer (benchmarks)."""
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def find_stop_string(self, seq: Sequence) -> bool:
        """If seq's text now contains one of its stop strings, record where the text ends
        (seq.stop_text_end) and return True. Only the text not searched before (plus an
        overlap of the longest stop string) is searched."""
        params = seq.request.sampling_params
        if not params.stop:
            return False
        text = self.decode(seq.output_token_ids)
        longest = max(len(s) for s in params.stop)
        start = max(0, self._checked_chars.get(id(seq), 0) - longest + 1)
        self._checked_chars[id(seq)] = len(text)
        best: tuple[int, str] | None = None
        for stop in params.stop:
            at = text.find(stop, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return False
        at, stop = best
        seq.stop_text_end = at + len(stop) if params.include_stop_str_in_output else at
        return True

    def completion(self, seq: Sequence) -> Completion:
        """The Completion of a finished sequence; forgets the sequence's search state."""
        assert seq.finish_reason is not None
        self._checked_chars.pop(id(seq), None)
        text = self.decode(seq.output_token_ids)
        if seq.stop_text_end is not None:
            text = text[: seq.stop_text_end]
        wants_logprobs = seq.request.sampling_params.logprobs is not None
        return Completion(
            request_id=seq.request.request_id,
            index=seq.request.arrival_index,
            prompt_token_ids=seq.request.prompt_token_ids,
            token_ids=tuple(seq.output_token_ids),
            text=text,
            finish_reason=seq.finish_reason,
            logprobs=tuple(seq.logprobs) if wants_logprobs else None,
            num_cached_tokens=seq.num_cached_tokens,
            num_preemptions=seq.num_preemptions,
        )


def error_completion(
    request_id: Any, index: int, message: str, prompt_token_ids: tuple[int, ...] = ()
) -> Completion:
    return Completion(
        request_id=request_id,
        index=index,
        prompt_token_ids=prompt_token_ids,
        token_ids=(),
        text="",
        finish_reason=FinishReason.ERROR,
        error=message,
    )
