"""Build the proposer a speculative config names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config import EngineConfig, SpeculativeConfig, SpeculativeMethod
from engine.spec.ngram import NgramProposer
from engine.spec.proposer import Proposer


def build_proposer(
    spec: SpeculativeConfig,
    target: EngineConfig,
    cache_dir: Path | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Proposer:
    if spec.method is SpeculativeMethod.NGRAM:
        return NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
    from engine.spec.draft_model import DraftModelProposer

    assert spec.draft_model is not None
    return DraftModelProposer.load(spec.draft_model, target, cache_dir, storage_options)
