"""Load a model folder (config.json, *.safetensors, tokenizer files) or a GGUF file, from a local
path or any fsspec URL, into our Llama-family module."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors import safe_open

from engine.config import ModelConfig
from engine.kernel_set import KernelSet
from engine.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.gguf")


@dataclass(frozen=True)
class ModelSource:
    """A local folder holding the model, and the GGUF file inside it when it is one."""

    directory: Path
    gguf_file: str | None = None


def resolve_model_source(
    model: str, cache_dir: Path | None = None, storage_options: dict[str, Any] | None = None
) -> ModelSource:
    """Map a path or URL to local files, downloading remote folders once into cache_dir."""
    protocol, _, rest = model.partition("://") if "://" in model else ("file", "", model)
    if protocol == "file":
        path = Path(rest).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model path {model!r} does not exist")
        if path.is_file():
            if path.suffix != ".gguf":
                raise ValueError(f"model {model!r} is a file but not a .gguf file")
            return ModelSource(path.parent, path.name)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model folder {model!r} has no config.json")
        return ModelSource(path)
    fs = fsspec.filesystem(protocol, **(storage_options or {}))
    root = (cache_dir or Path.home() / ".cache" / "batchgen") / "remote"
    local = root / hashlib.sha256(model.encode()).hexdigest()[:16]
    if model.endswith(".gguf"):
        target = local / Path(rest).name
        if not target.exists():
            local.mkdir(parents=True, exist_ok=True)
            fs.get(model, str(target) + ".part")
            Path(str(target) + ".part").rename(target)
        return ModelSource(local, target.name)
    if not (local / ".complete").exists():
        local.mkdir(parents=True, exist_ok=True)
        names = [
            p for pattern in MODEL_FILE_PATTERNS for p in fs.glob(f"{rest.rstrip('/')}/{pattern}")
        ]
        if not any(n.endswith("config.json") for n in names):
            raise FileNotFoundError(f"model folder {model!r} has no config.json")
        for name in names:
            logger.info("downloading %s", name)
            fs.get(name, str(local / Path(name).name))
        (local / ".complete").write_text(model)
    return ModelSource(local)


def load_hf_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    if source.gguf_file:
        return AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file)
    return AutoConfig.from_pretrained(source.directory)


def extra_eos_token_ids(source: ModelSource) -> tuple[int, ...]:
    """EOS ids named by generation_config.json (chat models often add their end-of-turn token)."""
    path = source.directory / "generation_config.json"
    if not path.exists():
        return ()
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (eos,)


def build_model(
    config: ModelConfig,
    source: ModelSource,
    kernels: KernelSet,
    dtype: torch.dtype,
    device: torch.device,
) -> LlamaForCausalLM:
    """Create the module on device and fill every weight from the source; a missing weight is an
    error naming it."""
    model = LlamaForCausalLM(config, kernels, dtype, device)
    load_weights(model, _source_tensors(source))
    return model


def _source_tensors(source: ModelSource) -> Iterator[tuple[str, torch.Tensor]]:
    if source.gguf_file:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(
            source.directory, gguf_file=source.gguf_file, dtype=torch.float32
        )
        yield from hf.state_dict().items()
        return
    files = sorted(source.directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {source.directory}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("gate_up_proj", 0),
    "mlp.up_proj": ("gate_up_proj", 1),
}
_RENAMED = {
    "input_layernorm.weight": "input_layernorm_weight",
    "post_attention_layernorm.weight": "post_attention_layernorm_weight",
    "self_attn.o_proj.weight": "self_attn.o_proj_weight",
    "self_attn.q_norm.weight": "self_attn.q_norm_weight",
    "self_attn.k_norm.weight": "self_attn.k_norm_weight",
    "mlp.down_proj.weight": "down_proj_weight",
}


def load_weights(model: LlamaForCausalLM, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Copy Hugging Face-named tensors into the model, fusing q/k/v and gate/up."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    cfg = model.config
    q_size = cfg.num_attention_heads * cfg.head_dim
    kv_size = cfg.num_key_value_heads * cfg.head_dim
    shard_offsets = {
        "self_attn.qkv_proj": [0, q_size, q_size + kv_size],
        "gate_up_proj": [0, cfg.intermediate_size],
    }
    for name, tensor in tensors:
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        target, offset = _target_name(name, shard_offsets)
        if target is None or target not in params:
            raise ValueError(f"unexpected weight {name!r} for {cfg.architecture}")
        param = params[target]
        if offset is None:
            if param.shape != tensor.shape:
                raise ValueError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}"
                )
            param.data.copy_(tensor)
        else:
            param.data[offset : offset + tensor.shape[0]].copy_(tensor)
        loaded.add(f"{target}@{offset}")
    expected = _expected_loads(model, shard_offsets)
    missing = sorted(expected - loaded)
    if missing:
        raise ValueError(f"checkpoint lacks weights: {', '.join(missing[:8])}")


def _target_name(name: str, shard_offsets: dict[str, list[int]]) -> tuple[str | None, int | None]:
    if name == "model.embed_tokens.weight":
        return "embed_tokens_weight", None
    if name == "model.norm.weight":
        return "norm_weight", None
    if name == "lm_head.weight":
        return "lm_head_weight", None
    match = _LAYER.match(name)
    if not match:
        return None, None
    layer, rest = match.groups()
    prefix = f"layers.{layer}."
    if rest in _RENAMED:
        return prefix + _RENAMED[rest], None
    module, _, kind = rest.rpartition(".")
    if module in _FUSED:
        fused, shard = _FUSED[module]
        return f"{prefix}{fused}_{kind}", shard_offsets[fused][shard]
    return None, None


def _expected_loads(model: LlamaForCausalLM, shard_offsets: dict[str, list[int]]) -> set[str]:
    expected = set()
    for name, _ in model.named_parameters():
        if name == "lm_head_weight" and model.config.tie_word_embeddings:
            continue
        fused = next(
            (
                f
                for f in shard_offsets
                if name.endswith(f"{f}_weight") or name.endswith(f"{f}_bias")
            ),
            None,
        )
        if fused is None:
            expected.add(f"{name}@None")
        else:
            expected.update(f"{name}@{o}" for o in shard_offsets[fused])
    return expected
