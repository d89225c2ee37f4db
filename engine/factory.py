"""Assemble an engine from a config and a model: size the KV cache (profiling the GPU),
allocate it, capture CUDA graphs. Shared by `LLM` and the benchmarks."""

from __future__ import annotations

import atexit
import gc
import logging
import os

import torch

from engine.config import EngineConfig, ModelConfig
from engine.forward_batch import ForwardBatch
from engine.kernel_set import REFERENCE_KERNELS
from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner, allocate_kv_caches, kv_bytes_per_block
from engine.models.llama import LlamaForCausalLM
from engine.output_processor import OutputProcessor
from engine.spec.proposer import Proposer

logger = logging.getLogger(__name__)

MAX_GRAPH_BATCH_SIZE = 1024


def random_model(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> LlamaForCausalLM:
    """A model of config's shape with random weights (std 0.02, norms 1): benchmarks of real
    shapes need no checkpoint."""
    from engine.kernel_set import kernels_for

    model = LlamaForCausalLM(config, kernels_for(device), dtype, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() == 1 and "bias" not in name:
            param.data.fill_(1.0)
        else:
            param.data.normal_(0.0, 0.02, generator=gen)
    return model


def kv_budget_bytes(
    *,
    total: int,
    free: int,
    reserved: int,
    allocated: int,
    peak: int,
    baseline: int,
    utilization: float,
) -> int:
    """Bytes this engine may give its KV cache. gpu_memory_utilization is this engine's share of
    the card: its weights (and a draft model's), allocated since `baseline`, plus the profile
    step's activations (peak above `allocated`) plus other processes' use come off it. Engines
    created earlier in the same process are not charged to it, but it never gets more than the
    card still has free beyond the activations."""
    activations = peak - allocated
    own = allocated - baseline
    other_processes = total - free - reserved  # and this process's CUDA context
    share = total * utilization - own - activations - other_processes
    room = free + (reserved - allocated) - activations
    return int(min(share, room))


def profile_num_blocks(config: EngineConfig, model: LlamaForCausalLM, baseline: int = 0) -> int:
    """KV blocks that fit: run the largest step the scheduler may schedule (as prefill chunks),
    take the peak memory it needed, and give the cache what is left of gpu_memory_utilization
    of the card (kv_budget_bytes; `baseline` is what the process had allocated before this
    engine loaded its weights). On the CPU, cache.cpu_kv_cache_bytes."""
    per_block = kv_bytes_per_block(config.model, config.cache, config.dtype)
    if not config.device.startswith("cuda"):
        budget = config.cache.cpu_kv_cache_bytes
    else:
        device = torch.device(config.device)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device)
        _profile_step(config, model)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        free, total = torch.cuda.mem_get_info(device)
        budget = kv_budget_bytes(
            total=total,
            free=free,
            reserved=torch.cuda.memory_reserved(device),
            allocated=allocated,
            peak=peak,
            baseline=baseline,
            utilization=config.cache.gpu_memory_utilization,
        )
        logger.info(
            "profile: weights %.2f GiB, activations %.2f GiB, KV budget %.2f GiB",
            (allocated - baseline) / 2**30,
            (peak - allocated) / 2**30,
            budget / 2**30,
        )
    blocks = budget // per_block
    if blocks <= 0:
        raise RuntimeError(
            "no memory left for the KV cache: lower max_num_batched_tokens, use a smaller "
            "model or raise gpu_memory_utilization"
        )
    max_useful = config.scheduler.max_num_seqs * -(
        -config.model.max_model_len // config.cache.block_size
    )
    return min(blocks, max_useful)


@torch.inference_mode()
def _profile_step(config: EngineConfig, model: LlamaForCausalLM) -> None:
    tokens = config.scheduler.max_num_batched_tokens
    seq_len = min(tokens, config.model.max_model_len)
    num_seqs = -(-tokens // seq_len)
    block_size = config.cache.block_size
    blocks_per_seq = -(-seq_len // block_size)
    device = torch.device(config.device)
    kv = allocate_kv_caches(config.model, config.cache, blocks_per_seq, config.dtype, device)
    lens = [min(seq_len, tokens - i * seq_len) for i in range(num_seqs)]
    cu = torch.tensor([0] + lens, device=device).cumsum(0).to(torch.int32)
    positions = torch.cat([torch.arange(n, device=device) for n in lens])
    batch = ForwardBatch(
        input_ids=torch.zeros(tokens, dtype=torch.int64, device=device),
        positions=positions,
        slot_mapping=positions.clone(),  # every sequence writes the same scratch blocks
        block_tables=torch.arange(blocks_per_seq, dtype=torch.int32, device=device).repeat(
            num_seqs, 1
        ),
        cu_query_lens=cu,
        context_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        logits_indices=cu[1:].long() - 1,
    )
    model.compute_logits(model(batch, kv))
    del kv


def create_engine(
    config: EngineConfig,
    model: LlamaForCausalLM,
    output_processor: OutputProcessor,
    eos_token_ids: frozenset[int],
    cuda_graphs: bool = True,
    proposer: Proposer | None = None,
    memory_baseline: int = 0,
) -> LLMEngine:
    """Size and allocate the KV cache, capture decode graphs (CUDA with Triton kernels only,
    unless BATCHGEN_CUDA_GRAPHS=0), and return a ready engine. memory_baseline: the bytes the
    process had allocated on the device before this engine's weights loaded (other engines')."""
    device = torch.device(config.device)
    num_blocks = config.cache.num_blocks or profile_num_blocks(config, model, memory_baseline)
    kv_caches = allocate_kv_caches(config.model, config.cache, num_blocks, config.dtype, device)
    shared_prefix = (
        config.cache.shared_prefix_attention
        and config.cache.enable_prefix_caching
        and model.kernels is not REFERENCE_KERNELS  # the references attend plainly anyway
    )
    runner = ModelRunner(model, kv_caches, config.cache.block_size, device, shared_prefix)
    use_graphs = (
        cuda_graphs
        and device.type == "cuda"
        and model.kernels is not REFERENCE_KERNELS
        and os.environ.get("BATCHGEN_CUDA_GRAPHS", "1") != "0"
    )
    if use_graphs:
        max_blocks = -(-config.model.max_model_len // config.cache.block_size)
        families = [(1, min(config.scheduler.max_num_seqs, MAX_GRAPH_BATCH_SIZE))]
        spec = config.speculative
        if spec is not None and spec.max_batch_size > 0:
            verify_batch = min(config.scheduler.max_num_seqs, spec.max_batch_size)
            families.append((spec.num_speculative_tokens + 1, verify_batch))
        runner.enable_cuda_graphs(families, max_blocks)
    logger.info(
        "KV cache: %d blocks of %d tokens (%s), CUDA graphs %s",
        num_blocks,
        config.cache.block_size,
        config.cache.kv_cache_dtype.value,
        "on" if use_graphs else "off",
    )
    engine = LLMEngine(config, runner, num_blocks, output_processor, eos_token_ids, proposer)
    # Move everything alive now (imported modules, the model, captured graphs: ~340k objects
    # after importing transformers) out of the garbage collector's reach: they live as long as
    # the process, and every full collection during generation traversed them again (a
    # host-side stall of ~25 ms every few steps at 512 sequences; schedule() took 5.4 ms per
    # step with them, 2.0 without). Objects stay freed by reference counting as usual.
    gc.collect()
    gc.freeze()
    # Give them back at exit so that shutdown collects as usual (extension modules check for
    # objects left alive then, and complain).
    atexit.register(gc.unfreeze)
    return engine
