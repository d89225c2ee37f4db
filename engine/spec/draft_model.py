"""A draft model proposer: a smaller model with the target's tokenizer, its own paged KV cache,
run by the same model runner. It mirrors each target sequence: before proposing, it rolls its
own state back to the longest prefix it shares with the target's tokens (dropping rejected
drafts), catches up on the tokens it has not seen, then samples k drafts one step at a time,
the steps queued on the device back to back (the host reads the drafts once, at the end)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from engine.config import CacheConfig, EngineConfig, ModelConfig
from engine.kernel_set import REFERENCE_KERNELS, kernels_for
from engine.kv_cache_manager import KVCacheManager
from engine.loader import build_model, load_hf_config, resolve_model_source
from engine.model_runner import (
    ModelRunner,
    PendingInputs,
    allocate_kv_caches,
    kv_bytes_per_block,
)
from engine.models.llama import LlamaForCausalLM
from engine.request import PENDING_TOKEN, Request, Sequence
from engine.scheduler import ScheduledChunk, SchedulerOutput
from engine.spec.proposer import Proposal
from engine.spec.rejection_sampler import processed_probs

logger = logging.getLogger(__name__)


def estimate_draft_cost(draft: ModelConfig, target: ModelConfig) -> float:
    """A draft step's time over a target step's at the small batches speculation runs at:
    half weight bytes read (bandwidth), half layer count (per-layer launch and latency).
    Qwen2.5 0.5B for 1.5B: 0.59 by this, ~0.6 measured on an H100 at batch 1-16."""

    def weights(config: ModelConfig) -> int:
        counts = config.param_counts()
        return counts["layers"] + counts["lm_head"]

    return 0.5 * weights(draft) / weights(target) + 0.5 * (
        draft.num_hidden_layers / target.num_hidden_layers
    )


class DraftModelProposer:
    def __init__(
        self,
        model: LlamaForCausalLM,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        cost_per_token: float,
    ) -> None:
        self.model = model
        self.cost_per_token = cost_per_token
        self.block_size = block_size
        self.device = device
        cache = CacheConfig(
            block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=False
        )
        kv = allocate_kv_caches(
            model.config, cache, num_blocks, model.embed_tokens_weight.dtype, device
        )
        self.runner = ModelRunner(model, kv, block_size, device)
        self.kv_cache = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
        self.states: dict[Sequence, Sequence] = {}  # target sequence -> the draft's mirror
        self.generator = torch.Generator(device=device).manual_seed(0x5EED)

    @classmethod
    def load(
        cls,
        model: str,
        target: EngineConfig,
        cache_dir: Path | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> DraftModelProposer:
        """Load the draft model beside the target; the vocabularies must match."""
        source = resolve_model_source(model, cache_dir, storage_options)
        config = ModelConfig.from_hf_config(load_hf_config(source))
        if config.vocab_size != target.model.vocab_size:
            raise ValueError(
                f"draft model vocab_size {config.vocab_size} differs from the target's "
                f"{target.model.vocab_size}: they must share a tokenizer"
            )
        device = torch.device(target.device)
        net = build_model(config, source, kernels_for(device), target.dtype, device)
        assert target.speculative is not None
        block_size = target.cache.block_size
        per_seq = -(-min(config.max_model_len, target.model.max_model_len) // block_size)
        wanted = max(1, target.speculative.max_batch_size) * per_seq
        per_block = kv_bytes_per_block(config, CacheConfig(block_size=block_size), target.dtype)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(free * 0.1)
        else:
            budget = target.cache.cpu_kv_cache_bytes // 2
        num_blocks = max(1, min(wanted, budget // per_block))
        cost = target.speculative.draft_cost_ratio
        if cost is None:
            cost = estimate_draft_cost(config, target.model)
        proposer = cls(net, num_blocks, block_size, device, cost)
        graphs = (
            device.type == "cuda"
            and net.kernels is not REFERENCE_KERNELS
            and os.environ.get("BATCHGEN_CUDA_GRAPHS", "1") != "0"
            and target.speculative.max_batch_size > 0
        )
        if graphs:
            # one draft token per step (q=1), and the catch-up step that runs the tokens the
            # target accepted since the last proposal (up to k drafts + 1)
            batch = target.speculative.max_batch_size
            k = target.speculative.num_speculative_tokens
            proposer.runner.enable_cuda_graphs([(1, batch), (k + 1, batch)], per_seq)
        logger.info(
            "draft model %s: %d KV blocks, CUDA graphs %s, a draft step costs %.2f target steps",
            model,
            num_blocks,
            "on" if graphs else "off",
            cost,
        )
        return proposer

    def release(self, seq: Sequence) -> None:
        state = self.states.pop(seq, None)
        if state is not None:
            self.kv_cache.free(state)

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> Proposal:
        """Up to num_tokens[i] drafts for seqs[i]. Draft steps follow one another on the device:
        each step's input is the token the step before sampled, copied there (PendingInputs),
        and the host reads every draft once at the end, instead of waiting for each step."""
        want_probs = any(not s.request.sampling_params.greedy for s in seqs)
        states = [self._sync(seq) for seq in seqs]
        active = [i for i, k in enumerate(num_tokens) if k > 0 and states[i] is not None]
        steps: list[tuple[list[int], torch.Tensor, torch.Tensor | None]] = []
        drafted = [0] * len(seqs)
        previous: dict[int, int] = {}  # seq index -> its row in the last step's tokens
        while active:
            out = SchedulerOutput(block_tables=self.kv_cache.tables)
            ran: list[int] = []
            pending_rows, pending_sources = [], []
            row = 0
            for i in active:
                state = states[i]
                assert state is not None
                n = state.num_tokens - state.num_computed_tokens
                if not self.kv_cache.allocate_slots(state, n):
                    continue  # the draft cache is full: stop proposing for this sequence
                out.chunks.append(ScheduledChunk(state, state.num_computed_tokens, n))
                if i in previous:  # its last token is the previous step's draft
                    pending_rows.append(row + n - 1)
                    pending_sources.append(previous[i])
                state.num_computed_tokens += n
                ran.append(i)
                row += n
            if not ran:
                break
            pending = None
            if pending_rows:
                pending = PendingInputs(pending_rows, pending_sources, steps[-1][1])
            logits = self.runner.execute(out, pending, float_logits=want_probs)
            tokens, rows = self._sample(logits, [seqs[i] for i in ran], want_probs)
            steps.append((ran, tokens, rows))
            for i in ran:
                states[i].token_ids.append(PENDING_TOKEN)  # type: ignore[union-attr]
                drafted[i] += 1
            previous = {i: j for j, i in enumerate(ran)}
            active = [i for i in ran if drafted[i] < num_tokens[i]]
        drafts: list[list[int]] = [[] for _ in seqs]
        probs: list[list[torch.Tensor]] = [[] for _ in seqs]
        if steps:
            values = torch.cat([tokens for _, tokens, _ in steps]).tolist()  # the one wait
            offset = 0
            for ran, _, rows in steps:
                for j, i in enumerate(ran):
                    drafts[i].append(values[offset + j])
                    if rows is not None:
                        probs[i].append(rows[j])
                offset += len(ran)
            for i, d in enumerate(drafts):
                if d:
                    state = states[i]
                    assert state is not None
                    state.token_ids[-len(d) :] = d  # the placeholders, now known
        stacked = None
        if want_probs:
            vocab = self.model.config.vocab_size
            stacked = [
                torch.stack(p) if p else torch.zeros((0, vocab), device=self.device) for p in probs
            ]
        return Proposal(drafts, stacked)

    def _sync(self, seq: Sequence) -> Sequence | None:
        """The draft's mirror of seq, rolled back to their longest common prefix and holding
        seq's tokens (the uncomputed ones are caught up by the next draft step)."""
        state = self.states.get(seq)
        if state is None:
            request = Request(
                seq.request.request_id, seq.request.prompt_token_ids, seq.request.sampling_params
            )
            state = Sequence.from_request(request)
            self.states[seq] = state
        common = 0
        # the last token is always run again: its logits give the first draft (it may already be
        # in the draft's cache when the target kept a plain token equal to the draft's first)
        limit = min(len(state.token_ids), len(seq.token_ids) - 1, state.num_computed_tokens)
        while common < limit and state.token_ids[common] == seq.token_ids[common]:
            common += 1
        state.num_computed_tokens = common
        state.token_ids = list(seq.token_ids)
        self.kv_cache.trim(state, common)
        return state

    def _sample(
        self, logits: torch.Tensor, seqs: list[Sequence], want_probs: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Greedy requests take the draft's argmax; others sample its processed distribution.
        Returns the tokens as a device tensor (nothing waits for the device here)."""
        tokens = logits.argmax(dim=-1)
        rows = None
        if want_probs:
            greedy = torch.tensor([s.request.sampling_params.greedy for s in seqs])
            rows = processed_probs(logits, seqs, 1)
            noise = torch.empty_like(rows).exponential_(generator=self.generator)
            for i, seq in enumerate(seqs):
                state = self.states[seq]
                seed = seq.request.sampling_params.seed
                if seed is not None:
                    if state.generator is None:  # seeded apart from the target's stream
                        state.generator = torch.Generator(device=logits.device).manual_seed(
                            seed ^ 0x5EED
                        )
                    noise[i].exponential_(generator=state.generator)
            greedy = greedy.to(logits.device, non_blocking=True)
            tokens = torch.where(greedy, tokens, (rows / noise).argmax(dim=-1))
        return tokens, rows
