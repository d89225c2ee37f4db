"""Turning the job's `model` string into engine objects: a registry name (engine.model_assets,
e.g. ``smollm2``) is fetched into the local cache; anything else is a path or fsspec URL."""

from __future__ import annotations

from typing import Any

from engine import LLM
from engine.loader import resolve_model_source
from engine.model_assets import MODEL_ASSETS, fetch_model
from engine.tokenizer import load_tokenizer
from pipeline.config import JobConfig


def resolve_model(model: str) -> str:
    """The local folder of a registry model (fetched on first use), else model unchanged."""
    if model in MODEL_ASSETS:
        return str(fetch_model(model, progress=False))
    return model


def load_job_tokenizer(config: JobConfig) -> Any:
    """The model's tokenizer only (no weights): what planning needs."""
    source = resolve_model_source(resolve_model(config.model), None, config.storage_options)
    return load_tokenizer(source)


def load_job_llm(config: JobConfig) -> LLM:
    """The engine for this job, built from config.engine and config.sampling."""
    kwargs = config.engine.llm_kwargs()
    speculative = kwargs.get("speculative")
    if speculative and speculative.get("model"):  # a registry name or a path, like `model`
        kwargs["speculative"] = {**speculative, "model": resolve_model(speculative["model"])}
    return LLM(
        resolve_model(config.model),
        default_sampling_params=config.sampling,
        storage_options=config.storage_options or None,
        **kwargs,
    )
