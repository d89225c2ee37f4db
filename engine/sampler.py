"""Turn logits into next tokens: greedy, temperature, top-k, top-p, per-request seeds, logprobs.

Random rows sample by the exponential race (argmax of probs / E with E ~ Exp(1)), which draws
exactly from probs. A seeded request draws its noise from its own generator, so its samples do
not depend on what else is in the batch; unseeded rows share the engine's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.request import Sequence, TokenLogprob


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Mask (to -inf) what top-k and top-p exclude, row by row. logits: [num_rows, vocab] fp32;
    top_k: [num_rows] int (<= 0 disables); top_p: [num_rows] float (1.0 disables).
    The most likely token always survives."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    remove = ranks >= k.unsqueeze(1)
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove |= mass_before >= top_p.unsqueeze(1)
    remove[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


class Sampler:
    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits: [len(seqs), vocab] fp32, row i for seqs[i]. Advances seeded sequences'
        generators by one draw each; mutates nothing else."""
        ids = self.sample_on_device(logits, seqs).tolist()
        return SamplerOutput(ids, self.logprobs(logits, seqs, ids))

    def sample_on_device(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """The next token of each row as a tensor on logits' device, without waiting for the
        device (the overlapped engine reads it a step later)."""
        params = [s.request.sampling_params for s in seqs]
        greedy_rows = [p.greedy for p in params]
        token_ids = logits.argmax(dim=-1)
        if not all(greedy_rows):
            greedy = torch.tensor(greedy_rows).to(logits.device, non_blocking=True)
            token_ids = torch.where(greedy, token_ids, self._sample(logits, seqs))
        return token_ids

    def logprobs(
        self, logits: torch.Tensor, seqs: list[Sequence], ids: list[int]
    ) -> list[TokenLogprob | None]:
        """Logprobs of the sampled ids (and top-n) for the rows whose request asks for them."""
        params = [s.request.sampling_params for s in seqs]
        logprobs: list[TokenLogprob | None] = [None] * len(seqs)
        wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
        if wanted:
            rows = torch.tensor(wanted, device=logits.device)
            all_logprobs = logits[rows].log_softmax(dim=-1)
            for j, i in enumerate(wanted):
                n = params[i].logprobs or 0
                top: dict[int, float] = {}
                if n > 0:
                    values, indices = all_logprobs[j].topk(n)
                    top = dict(zip(indices.tolist(), values.tolist(), strict=True))
                logprobs[i] = TokenLogprob(ids[i], float(all_logprobs[j, ids[i]]), top)
        return logprobs

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        params = [s.request.sampling_params for s in seqs]
        device = logits.device
        temperature = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params])
        scaled = logits / temperature.to(device, non_blocking=True).unsqueeze(1)
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):  # decided on the host: no sync
            top_k = torch.tensor([p.top_k for p in params]).to(device, non_blocking=True)
            top_p = torch.tensor([p.top_p for p in params]).to(device, non_blocking=True)
            scaled = apply_top_k_top_p(scaled, top_k, top_p)
        probs = scaled.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for i, seq in enumerate(seqs):
            if seq.request.sampling_params.seed is not None:
                if seq.generator is None:
                    seq.generator = torch.Generator(device=logits.device)
                    seq.generator.manual_seed(seq.request.sampling_params.seed)
                noise[i].exponential_(generator=seq.generator)
        return (probs / noise).argmax(dim=-1)
