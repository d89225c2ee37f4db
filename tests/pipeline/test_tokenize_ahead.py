from __future__ import annotations

import pytest

from engine import RequestError, SamplingParams
from engine.tokenizer import PromptEncoder
from pipeline.rows import PromptKind, RowRequest
from pipeline.tokenize_ahead import TokenizeAhead


class _CharTokenizer:
    """Encodes each character as its code point; 'boom' raises like a broken tokenizer."""

    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if text == "boom":
            raise RuntimeError("tokenizer crashed")
        return [ord(c) for c in text]


def _text(prompt: str) -> RowRequest:
    return RowRequest(PromptKind.TEXT, prompt, None, SamplingParams())


def test_results_come_in_order_and_rejections_are_handed_over_not_raised():
    chat = RowRequest(PromptKind.CHAT, None, ({"role": "user", "content": "hi"},), SamplingParams())
    requests = [_text("ab"), chat, _text("c")]
    with TokenizeAhead(PromptEncoder(_CharTokenizer()), requests, depth=1) as ahead:
        results = list(ahead)
    assert [p for p, _ in results] == [0, 1, 2]
    assert results[0][1] == [97, 98] and results[2][1] == [99]
    assert isinstance(results[1][1], RequestError) and "chat template" in str(results[1][1])


def test_an_unexpected_tokenizer_failure_is_raised_in_the_consumer():
    with TokenizeAhead(PromptEncoder(_CharTokenizer()), [_text("a"), _text("boom")]) as ahead:
        items = iter(ahead)
        assert next(items) == (0, [97])
        with pytest.raises(RuntimeError, match="tokenizer crashed"):
            next(items)


def test_leaving_early_stops_a_producer_blocked_on_a_full_queue():
    requests = [_text(str(i)) for i in range(1000)]
    with TokenizeAhead(PromptEncoder(_CharTokenizer()), requests, depth=2) as ahead:
        first = next(iter(ahead))
    assert first == (0, [48])
    assert not ahead._thread.is_alive()
