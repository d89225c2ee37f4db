"""Sampler against reference distributions (statistical), greedy and seeded determinism."""

import pytest
import torch

from engine.request import Request, Sequence
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
NUM_DRAWS = 20000
# chi-square critical value for 5 degrees of freedom at p = 0.001
CHI2_CRITICAL_DF5 = 20.52


def seqs_for(params, n):
    return [Sequence.from_request(Request(i, (1,), params)) for i in range(n)]


def reference_probs(temperature, top_k, top_p):
    """Top-k first; top-p then keeps the most likely tokens of the renormalized top-k
    distribution until their mass reaches top_p (the convention of transformers' warpers)."""
    probs = torch.softmax(LOGITS / temperature, dim=-1).double()
    order = probs.argsort(descending=True).tolist()
    if top_k > 0:
        order = order[:top_k]
    total = float(probs[order].sum())
    keep = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for token in order:
        if mass >= top_p:
            break
        keep[token] = True
        mass += float(probs[token]) / total
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs / probs.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.5, 3, 1.0), (1.0, 0, 0.7), (0.8, 4, 0.9)],
)
def test_sampled_frequencies_follow_the_reference_distribution(temperature, top_k, top_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    sampler = Sampler(torch.device("cpu"), seed=1234)
    out = sampler(LOGITS.repeat(NUM_DRAWS, 1), seqs_for(params, NUM_DRAWS))
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=len(LOGITS)).double()
    expected = reference_probs(temperature, top_k, top_p) * NUM_DRAWS
    assert torch.all(counts[expected == 0] == 0), "sampled a token top-k/top-p excludes"
    support = expected > 0
    chi2 = float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())
    assert chi2 < CHI2_CRITICAL_DF5


def test_greedy_rows_take_the_argmax_next_to_random_rows():
    sampler = Sampler(torch.device("cpu"), seed=0)
    seqs = seqs_for(SamplingParams(temperature=0), 3) + seqs_for(SamplingParams(temperature=2), 3)
    logits = torch.randn(6, 50)
    out = sampler(logits, seqs)
    assert out.token_ids[:3] == logits[:3].argmax(-1).tolist()


def test_seeded_rows_do_not_depend_on_the_rest_of_the_batch():
    params = SamplingParams(temperature=1.0, seed=42)
    logits = torch.randn(1, 1000)
    alone = Sampler(torch.device("cpu"), 0)(logits, seqs_for(params, 1)).token_ids
    crowd_logits = torch.cat([torch.randn(5, 1000), logits])
    crowd_seqs = seqs_for(SamplingParams(temperature=1.0), 5) + seqs_for(params, 1)
    crowd = Sampler(torch.device("cpu"), 99)(crowd_logits, crowd_seqs).token_ids[-1]
    assert alone == [crowd]


def test_seeded_sequence_draws_a_fresh_sample_each_step():
    params = SamplingParams(temperature=1.0, seed=7)
    seq = seqs_for(params, 1)
    sampler = Sampler(torch.device("cpu"), 0)
    draws = [sampler(torch.zeros(1, 1000), seq).token_ids[0] for _ in range(5)]
    assert len(set(draws)) > 1


def test_logprobs_are_log_softmax_of_the_logits_with_top_n():
    logits = torch.randn(2, 30)
    seqs = seqs_for(SamplingParams(temperature=0, logprobs=3), 2)
    out = Sampler(torch.device("cpu"), 0)(logits, seqs)
    expected = logits.log_softmax(-1)
    for i, lp in enumerate(out.logprobs):
        assert lp is not None and lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(float(expected[i, lp.token_id]), abs=1e-6)
        top = expected[i].topk(3)
        assert list(lp.top) == top.indices.tolist()
