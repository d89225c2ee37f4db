"""Verify draft tokens against the target model so that the output follows the target's
distribution exactly (greedy requests: exactly the tokens greedy decoding would give).

For each sequence with drafts d_0..d_{k-1} and target rows 0..k (row i predicts the token after
draft i-1; row 0 follows the last accepted token):
  draft i is accepted with probability min(1, target_probs[i][d_i] / draft_probs[i][d_i]),
  stopping at the first rejection; a rejected position is *recovered* by sampling from the
  residual max(0, target_probs - draft_probs) renormalized; if every draft is accepted, a *bonus*
  token is sampled from row k. A proposer without probabilities (n-gram) proposes one-hot drafts.
Greedy rows accept a draft iff it is the target's argmax and take the argmax where they stop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.request import Sequence
from engine.sampler import apply_top_k_top_p


@dataclass
class VerifyOutput:
    num_accepted: list[int]  # per sequence: leading drafts accepted
    token_ids: list[list[int]]  # per sequence: accepted drafts + one recovered or bonus token


def processed_probs(logits: torch.Tensor, seqs: list[Sequence], rows_per_seq: int) -> torch.Tensor:
    """Target (or draft) probabilities after temperature, top-k and top-p of each row's request.
    logits: [len(seqs) * rows_per_seq, vocab] fp32 -> same shape, rows summing to 1."""
    params = [s.request.sampling_params for s in seqs for _ in range(rows_per_seq)]
    device = logits.device
    temperature = torch.tensor(
        [p.temperature if p.temperature > 0 else 1.0 for p in params], device=device
    )
    scaled = logits / temperature.unsqueeze(1)
    top_k = torch.tensor([p.top_k for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    if bool((top_k > 0).any()) or bool((top_p < 1.0).any()):
        scaled = apply_top_k_top_p(scaled, top_k, top_p)
    return scaled.softmax(dim=-1)


class RejectionSampler:
    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator  # the engine's, for unseeded requests

    def __call__(
        self,
        target_logits: torch.Tensor,  # [num_seqs, k + 1, vocab] fp32
        draft_token_ids: list[list[int]],  # per sequence, 1..k drafts
        seqs: list[Sequence],
        draft_probs: torch.Tensor | None = None,  # [num_seqs, k, vocab], None = one-hot drafts
    ) -> VerifyOutput:
        num_seqs, rows, vocab = target_logits.shape
        k = rows - 1
        device = target_logits.device
        lengths = torch.tensor([len(d) for d in draft_token_ids], device=device)
        drafts = torch.tensor([d + [0] * (k - len(d)) for d in draft_token_ids], device=device)
        greedy = torch.tensor([s.request.sampling_params.greedy for s in seqs], device=device)
        positions = torch.arange(k, device=device)
        valid = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [num_seqs, k]

        argmax = target_logits.argmax(dim=-1)  # [num_seqs, k + 1]
        accept = drafts == argmax[:, :k]
        if not bool(greedy.all()):
            target_probs = processed_probs(target_logits.reshape(-1, vocab), seqs, rows).reshape(
                num_seqs, rows, vocab
            )
            p_draft = target_probs[:, :k].gather(2, drafts.unsqueeze(2)).squeeze(2)
            q_draft = (
                draft_probs.gather(2, drafts.unsqueeze(2)).squeeze(2)
                if draft_probs is not None
                else torch.ones_like(p_draft)
            )
            uniform = self._uniform((num_seqs, k), seqs, device)
            random_accept = uniform * q_draft < p_draft
            accept = torch.where(greedy.unsqueeze(1), accept, random_accept)
        accept &= valid
        num_accepted = accept.int().cumprod(dim=1).sum(dim=1)  # [num_seqs]

        final = argmax.gather(1, num_accepted.unsqueeze(1)).squeeze(1)
        if not bool(greedy.all()):
            stop_row = target_probs[
                torch.arange(num_seqs, device=device), num_accepted
            ]  # [num_seqs, vocab]
            rejected = num_accepted < lengths
            if draft_probs is not None:
                q_row = draft_probs[
                    torch.arange(num_seqs, device=device), num_accepted.clamp(max=k - 1)
                ]
            else:
                q_row = torch.zeros_like(stop_row)
                q_row.scatter_(1, drafts.gather(1, num_accepted.clamp(max=k - 1).unsqueeze(1)), 1.0)
            residual = (stop_row - q_row).clamp_min(0.0)
            mass = residual.sum(dim=1, keepdim=True)
            residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), stop_row)
            rows_to_sample = torch.where(rejected.unsqueeze(1), residual, stop_row)
            sampled = self._sample(rows_to_sample, seqs)
            final = torch.where(greedy, final, sampled)

        accepted_list = num_accepted.tolist()
        final_list = final.tolist()
        tokens = [
            d[:a] + [t] for d, a, t in zip(draft_token_ids, accepted_list, final_list, strict=True)
        ]
        return VerifyOutput(accepted_list, tokens)

    def _generator_for(self, seq: Sequence, device: torch.device) -> torch.Generator:
        if seq.request.sampling_params.seed is None:
            return self.generator
        if seq.generator is None:
            seq.generator = torch.Generator(device=device)
            seq.generator.manual_seed(seq.request.sampling_params.seed)
        return seq.generator

    def _uniform(
        self, shape: tuple[int, int], seqs: list[Sequence], device: torch.device
    ) -> torch.Tensor:
        uniform = torch.rand(shape, device=device, generator=self.generator)
        for i, seq in enumerate(seqs):
            if seq.request.sampling_params.seed is not None:
                uniform[i] = torch.rand(
                    shape[1], device=device, generator=self._generator_for(seq, device)
                )
        return uniform

    def _sample(self, probs: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """One token per row by the exponential race (see engine/sampler.py)."""
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for i, seq in enumerate(seqs):
            if seq.request.sampling_params.seed is not None:
                noise[i].exponential_(generator=self._generator_for(seq, probs.device))
        return (probs / noise).argmax(dim=-1)
