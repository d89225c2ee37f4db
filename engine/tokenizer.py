"""Prompt encoding: text, chat messages (through the model's chat template) or token ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import RequestError
from engine.loader import ModelSource


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    if source.gguf_file:
        return AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
    return AutoTokenizer.from_pretrained(source.directory)


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check a chat: a non-empty list of {role: str, content: str}; errors name the element."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise RequestError(
            f"messages: expected a list of {{role, content}}, got {type(messages).__name__}"
        )
    if not messages:
        raise RequestError("messages: empty list")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(
                f"messages[{i}]: expected an object with role and content, got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if key not in message or message[key] is None:
                raise RequestError(f"messages[{i}].{key}: missing")
            if not isinstance(message[key], str):
                raise RequestError(
                    f"messages[{i}].{key}: expected a string, got {type(message[key]).__name__}"
                )
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


class PromptEncoder:
    """Encodes one request's prompt; raises RequestError naming the field at fault."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode_text(self, prompt: Any) -> list[int]:
        if not isinstance(prompt, str):
            raise RequestError(f"prompt: expected a string, got {type(prompt).__name__}")
        if not prompt:
            raise RequestError("prompt: empty")
        return list(self.tokenizer.encode(prompt))

    def encode_messages(self, messages: Any) -> list[int]:
        checked = validate_messages(messages)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise RequestError("messages: the model's tokenizer has no chat template")
        try:
            text = self.tokenizer.apply_chat_template(
                checked, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # the template itself may reject a conversation
            raise RequestError(f"messages: the chat template rejected them: {exc}") from exc
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @staticmethod
    def check_token_ids(token_ids: Any) -> list[int]:
        if isinstance(token_ids, str | bytes) or not isinstance(token_ids, Sequence):
            raise RequestError("prompt_token_ids: expected a list of integers")
        if not token_ids:
            raise RequestError("prompt_token_ids: empty")
        for i, t in enumerate(token_ids):
            if isinstance(t, bool) or not isinstance(t, int):
                raise RequestError(f"prompt_token_ids[{i}]: expected an integer, got {t!r}")
        return list(token_ids)
