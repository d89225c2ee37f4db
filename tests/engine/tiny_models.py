"""Tiny random-weight models of the supported architectures, saved as Hugging Face folders with
a small word-level tokenizer, so engine tests run in seconds without any download."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
EOS_TOKEN_ID = 2


def _hf_config(arch: str):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        eos_token_id=EOS_TOKEN_ID,
        bos_token_id=1,
        pad_token_id=0,
        initializer_range=0.15,
        tie_word_embeddings=False,
    )
    if arch == "llama3":
        return LlamaConfig(
            **common,
            head_dim=16,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    if arch == "qwen2":
        return Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if arch == "qwen3":
        return Qwen3Config(
            **common, head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 1e6}
        )
    if arch == "mistral":
        return MistralConfig(
            **common,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        )
    raise ValueError(arch)


ARCHITECTURES = ("llama3", "qwen2", "qwen3", "mistral")


def write_tokenizer(path: Path) -> None:
    """A word-level tokenizer: "w7" is token 7; whitespace splits words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), VOCAB_SIZE)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<pad>",
    )
    fast.chat_template = (
        "{% for m in messages %}w3 {{ m['role'] }} {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w3 assistant {% endif %}"
    )
    fast.save_pretrained(path)


def make_tiny_model(arch: str, path: Path, seed: int = 0):
    """Save a random-weight model of arch at path; returns the fp32 transformers model."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_hf_config(arch), dtype=torch.float32)
    model.eval()
    model.save_pretrained(path)
    write_tokenizer(path)
    gen = path / "generation_config.json"
    if gen.exists():
        cfg = json.loads(gen.read_text())
        cfg["eos_token_id"] = EOS_TOKEN_ID
        gen.write_text(json.dumps(cfg))
    return model


def random_prompts(num: int, min_len: int, max_len: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (num,), generator=g).tolist()
    return [
        torch.randint(len(SPECIAL_TOKENS) + 3, VOCAB_SIZE, (n,), generator=g).tolist()
        for n in lengths
    ]


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation by transformers generate, batch 1 (no padding), EOS ignored."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    model.generation_config.eos_token_id = None  # else generate falls back to the model's EOS
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    assert out.shape[1] == len(prompt) + max_new_tokens
    return out[0, len(prompt) :].tolist()
