"""The offline API: `LLM(model).generate(prompts, params)` and `LLM.stream(requests)`."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine.config import (
    CacheConfig,
    EngineConfig,
    KVCacheDtype,
    ModelConfig,
    SchedulerConfig,
    SpeculativeConfig,
    SpeculativeMethod,
)
from engine.errors import RequestError
from engine.factory import create_engine
from engine.kernel_set import kernels_for
from engine.loader import build_model, extra_eos_token_ids, load_hf_config, resolve_model_source
from engine.metrics import RunMetrics
from engine.output_processor import OutputProcessor, error_completion
from engine.outputs import Completion
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.spec.build import build_proposer
from engine.tokenizer import PromptEncoder, load_tokenizer

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class GenerationRequest:
    """One request of a stream: exactly one of prompt, messages, prompt_token_ids.
    sampling_params may be a SamplingParams or a mapping of overrides on the LLM's defaults
    (an invalid mapping becomes an error Completion, not an exception)."""

    prompt: Any = None
    messages: Any = None
    prompt_token_ids: Any = None
    sampling_params: SamplingParams | Mapping[str, Any] | None = None
    request_id: Any = None


PromptLike = str | list[int] | list[dict[str, str]] | GenerationRequest


class LLM:
    """A model loaded once, ready to generate for any number of requests.

    Constructor arguments mirror the engine configs; model is a folder or .gguf file, local or
    on any fsspec URL (storage_options go to fsspec).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: str = "auto",
        device: str | None = None,
        block_size: int = 16,
        num_blocks: int | None = None,
        kv_cache_dtype: str = "auto",
        enable_prefix_caching: bool = True,
        shared_prefix_attention: bool = True,
        gpu_memory_utilization: float = 0.9,
        max_num_batched_tokens: int = 8192,
        max_num_seqs: int = 256,
        seed: int = 0,
        default_sampling_params: SamplingParams | None = None,
        storage_options: dict[str, Any] | None = None,
        cache_dir: Path | None = None,
        cuda_graphs: bool = True,
        speculative: SpeculativeConfig | Mapping[str, Any] | None = None,
        overlap_scheduling: bool | None = None,
    ) -> None:
        started = time.perf_counter()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        elif dtype in _DTYPES:
            torch_dtype = _DTYPES[dtype]
        else:
            raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
        try:
            kv_dtype = KVCacheDtype(kv_cache_dtype)
        except ValueError:
            raise ValueError(
                f"kv_cache_dtype must be auto or int8, got {kv_cache_dtype!r}"
            ) from None
        source = resolve_model_source(str(model), cache_dir, storage_options)
        model_config = ModelConfig.from_hf_config(load_hf_config(source))
        self.tokenizer = load_tokenizer(source)
        eos = set(model_config.eos_token_ids) | set(extra_eos_token_ids(source))
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        cache = CacheConfig(
            block_size=block_size,
            num_blocks=num_blocks,
            kv_cache_dtype=kv_dtype,
            enable_prefix_caching=enable_prefix_caching,
            shared_prefix_attention=shared_prefix_attention,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        spec_config = speculative_config(speculative)
        self.config = EngineConfig(
            model=model_config,
            cache=cache,
            scheduler=SchedulerConfig(max_num_batched_tokens, max_num_seqs),
            speculative=spec_config,
            dtype=torch_dtype,
            device=device,
            seed=seed,
            overlap_scheduling=overlap_scheduling,
        )
        torch_device = torch.device(device)
        # what other engines in this process hold is not this engine's to count
        baseline = torch.cuda.memory_allocated(torch_device) if torch_device.type == "cuda" else 0
        net = build_model(
            model_config, source, kernels_for(torch_device), torch_dtype, torch_device
        )
        proposer = (
            build_proposer(spec_config, self.config, cache_dir, storage_options)
            if spec_config is not None
            else None
        )
        self.engine = create_engine(
            self.config,
            net,
            OutputProcessor(self.tokenizer),
            frozenset(eos),
            cuda_graphs,
            proposer,
            memory_baseline=baseline,
        )
        blocks = self.engine.kv_cache.num_blocks
        self.encoder = PromptEncoder(self.tokenizer)
        self.default_sampling_params = default_sampling_params or SamplingParams()
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "loaded %s (%s, %s) on %s in %.1fs: %d KV blocks of %d tokens",
            model,
            model_config.architecture,
            torch_dtype,
            device,
            self.load_seconds,
            blocks,
            block_size,
        )

    @property
    def metrics(self) -> RunMetrics:
        return self.engine.metrics

    def generate(
        self,
        prompts: PromptLike | Iterable[PromptLike],
        sampling_params: SamplingParams | Mapping[str, Any] | list[Any] | None = None,
        use_tqdm: bool = True,
    ) -> list[Completion]:
        """Generate for every prompt; returns Completions in input order. A prompt is text,
        a list of token ids, a chat (list of {role, content}) or a GenerationRequest.
        sampling_params is one value for all, or a list with one per prompt."""
        if isinstance(prompts, str | GenerationRequest):
            prompts = [prompts]
        prompt_list = list(prompts)
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompt_list):
                raise ValueError(
                    f"sampling_params has {len(sampling_params)} entries for {len(prompt_list)} prompts"
                )
            params_list = sampling_params
        else:
            params_list = [sampling_params] * len(prompt_list)
        requests = (
            _as_request(p, params) for p, params in zip(prompt_list, params_list, strict=True)
        )
        results = list(self.stream(requests, use_tqdm=use_tqdm, total=len(prompt_list)))
        return sorted(results, key=lambda c: c.index)

    def stream(
        self,
        requests: Iterable[GenerationRequest],
        *,
        max_pending: int | None = None,
        use_tqdm: bool = False,
        total: int | None = None,
    ) -> Iterator[Completion]:
        """Yield a Completion per request as each finishes (not in input order; Completion.index
        is the request's position in the iterator and request_id defaults to it). At most
        max_pending requests (default 4 * max_num_seqs) are held at once, so the input may be
        endless or far larger than memory. Closing the iterator early (or an exception in the
        caller's loop) drops the requests still in flight, so the next stream starts clean."""
        limit = max_pending or 4 * self.config.scheduler.max_num_seqs
        source = iter(requests)
        counter = itertools.count()
        exhausted = False
        progress = _Progress(total, use_tqdm)
        finished = False
        try:
            while True:
                while not exhausted and self.engine.num_unfinished < limit:
                    request = next(source, None)
                    if request is None:
                        exhausted = True
                        break
                    error = self._submit(request, next(counter))
                    if error is not None:
                        progress.update(error)
                        yield error
                if self.engine.num_unfinished == 0:
                    if exhausted:
                        finished = True
                        return
                    continue
                for completion in self.engine.step():
                    progress.update(completion)
                    yield completion
        finally:
            progress.close()
            if not finished:  # abandoned (closed early or an exception): drop what it queued
                aborted = self.engine.abort_all()
                if aborted:
                    logger.info("stream closed early: %d unfinished requests dropped", aborted)

    def _submit(self, gen: GenerationRequest, index: int) -> Completion | None:
        request_id = index if gen.request_id is None else gen.request_id
        try:
            params = self._params(gen.sampling_params)
            token_ids = self._encode(gen)
        except (RequestError, ValueError) as exc:
            self.engine.metrics.num_requests += 1
            self.engine.metrics.num_errors += 1
            return error_completion(request_id, index, str(exc))
        prompt = gen.prompt if isinstance(gen.prompt, str) else None
        return self.engine.add_request(Request(request_id, tuple(token_ids), params, prompt, index))

    def _params(self, given: SamplingParams | Mapping[str, Any] | None) -> SamplingParams:
        if given is None:
            return self.default_sampling_params
        if isinstance(given, SamplingParams):
            return given
        if isinstance(given, Mapping):
            return SamplingParams.from_mapping(given, self.default_sampling_params)
        raise RequestError(
            f"sampling_params: expected SamplingParams or a mapping, got {type(given).__name__}"
        )

    def _encode(self, gen: GenerationRequest) -> list[int]:
        given = [
            f for f in ("prompt", "messages", "prompt_token_ids") if getattr(gen, f) is not None
        ]
        if len(given) != 1:
            raise RequestError(
                "prompt: missing (give one of prompt, messages, prompt_token_ids)"
                if not given
                else f"prompt: give only one of {', '.join(given)}"
            )
        if gen.prompt is not None:
            return self.encoder.encode_text(gen.prompt)
        if gen.messages is not None:
            return self.encoder.encode_messages(gen.messages)
        return self.encoder.check_token_ids(gen.prompt_token_ids)


def speculative_config(
    given: SpeculativeConfig | Mapping[str, Any] | None,
) -> SpeculativeConfig | None:
    """The config a job file or caller gives ({method, model, k, ...} or the dataclass);
    `k` and `model` are short for num_speculative_tokens and draft_model."""
    if given is None or isinstance(given, SpeculativeConfig):
        return given
    values = dict(given)
    if "method" in values:
        try:
            values["method"] = SpeculativeMethod(values["method"])
        except ValueError:
            raise ValueError(
                f"speculative method must be ngram or draft, got {values['method']!r}"
            ) from None
    if "k" in values:
        values["num_speculative_tokens"] = values.pop("k")
    if "model" in values:
        values["draft_model"] = values.pop("model")
    return SpeculativeConfig(**values)


def _as_request(prompt: Any, params: Any) -> GenerationRequest:
    if isinstance(prompt, GenerationRequest):
        return (
            prompt
            if params is None or prompt.sampling_params is not None
            else replace(prompt, sampling_params=params)
        )
    if isinstance(prompt, str):
        return GenerationRequest(prompt=prompt, sampling_params=params)
    if isinstance(prompt, list | tuple) and prompt and all(isinstance(m, Mapping) for m in prompt):
        return GenerationRequest(messages=prompt, sampling_params=params)
    if isinstance(prompt, list | tuple):
        return GenerationRequest(prompt_token_ids=prompt, sampling_params=params)
    return GenerationRequest(prompt=prompt, sampling_params=params)


class _Progress:
    """A tqdm bar over completed requests with generated tokens/s; silent when disabled."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.bar = None
        self.tokens = 0
        self.started = time.perf_counter()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="generate", unit="req", dynamic_ncols=True)

    def update(self, completion: Completion) -> None:
        self.tokens += len(completion.token_ids)
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix(out_tok_s=f"{self.tokens / elapsed:.1f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
