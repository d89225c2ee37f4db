"""Speculative decoding acceptance on the spec_throughput tasks, counted by replay: steps, lookups
that found a match, mean acceptance length and tokens per step for a grid of n-gram settings.

    python -m bench.spec_replay --model smollm2 [--tasks rewrite,extract,correct]
        [--batch-sizes 1,4] [--k 4,8] [--lookup-min 1,2] [--lookup-max 3,4,5]
        [--max-tokens 256] [--oracle PATH] [--check] [--json PATH]

Greedy verification is exact, so a greedy run with speculation emits the tokens of the run
without it; only the number of steps depends on the proposer. So the target model runs once per
task (speculation off, fp32 on the CPU: the oracle), and every setting then runs the real engine
(scheduler, SpeculativeDecoder, NgramProposer, rejection sampler) against a scripted model runner
whose logits put the oracle's next token first. --check also runs the real model with
speculation on for the first setting of each task and batch size and asserts that its counters
equal the replay's (steps, verify steps, drafts; accepted drafts can differ by drafts verified past an
EOS, which are dropped and have no oracle token).

Counts only: on the CPU wall time says nothing about the GPU goal. The GPU estimate printed is
off_steps / (plain_steps + verify_cost * verify_steps) with verify_cost = t_verify / t_decode
(--verify-cost, 1.35: H100, SmolLM2, k=4, measured 1.8-2.0 ms vs 1.4 ms).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.spec_throughput import TASKS
from engine import LLM, SamplingParams
from engine.config import SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.model_assets import MODEL_ASSETS, model_dir
from engine.output_processor import OutputProcessor
from engine.request import Request, Sequence
from engine.scheduler import SchedulerOutput
from engine.spec.ngram import NgramProposer
from engine.spec.proposer import Proposal


@dataclass(frozen=True)
class Oracle:
    prompt_token_ids: list[list[int]]
    output_token_ids: list[list[int]]
    texts: list[str]


def make_oracle(llm: LLM, task: str, num_prompts: int, max_tokens: int) -> Oracle:
    spec = TASKS[task]
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=spec.ignore_eos)
    outs = llm.generate(spec.make_prompts(num_prompts), params, use_tqdm=False)
    return Oracle(
        [list(o.prompt_token_ids) for o in outs],
        [list(o.token_ids) for o in outs],
        [o.text for o in outs],
    )


class ScriptedRunner:
    """Stands in for ModelRunner: logits whose argmax is the oracle's next token at each row."""

    def __init__(self, outputs: dict[Any, list[int]], vocab_size: int) -> None:
        self.outputs = outputs
        self.vocab_size = vocab_size
        self.last_shared_prefix = None

    def execute(self, out: SchedulerOutput, float_logits: bool = True) -> torch.Tensor:
        targets = []
        for chunk in out.chunks:
            if not chunk.sample:
                continue
            seq = chunk.seq
            output = self.outputs[seq.request.request_id]
            first = seq.num_output_tokens  # row j predicts output token first + j
            for j in range(1 + len(chunk.draft_token_ids)):
                # past the oracle's end (after its EOS) any token will do: the seq stops before
                targets.append(output[first + j] if first + j < len(output) else 0)
        logits = torch.zeros((len(targets), self.vocab_size))  # [num_rows, vocab]
        logits[torch.arange(len(targets)), torch.tensor(targets)] = 1.0
        return logits


class CountingProposer:
    """Wraps a proposer: counts sequence-steps looked up and those that got drafts."""

    def __init__(self, inner: NgramProposer) -> None:
        self.inner = inner
        self.cost_per_token = inner.cost_per_token
        self.num_lookups = 0
        self.num_matches = 0

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> Proposal:
        proposal = self.inner.propose(seqs, num_tokens)
        self.num_lookups += sum(1 for k in num_tokens if k > 0)
        self.num_matches += sum(1 for d in proposal.token_ids if d)
        return proposal

    def release(self, seq: Sequence) -> None:
        self.inner.release(seq)


def replay(
    llm: LLM,
    oracle: Oracle,
    batch: int,
    spec: SpeculativeConfig | None,
    max_tokens: int,
    ignore_eos: bool,
) -> dict[str, float]:
    """Run the engine over the first `batch` oracle prompts with a scripted runner."""
    config = dataclasses.replace(llm.config, speculative=spec)
    proposer = None
    if spec is not None:
        proposer = CountingProposer(NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max))
    outputs = {i: oracle.output_token_ids[i] for i in range(batch)}
    runner = ScriptedRunner(outputs, config.model.vocab_size)
    engine = LLMEngine(
        config,
        runner,  # type: ignore[arg-type]
        llm.engine.kv_cache.num_blocks,
        OutputProcessor(None),
        llm.engine.scheduler.eos_token_ids,
        proposer,  # type: ignore[arg-type]
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=ignore_eos)
    for i in range(batch):
        assert engine.add_request(Request(i, tuple(oracle.prompt_token_ids[i]), params)) is None
    emitted: dict[int, list[int]] = {}
    while engine.num_unfinished:
        for c in engine.step():
            emitted[c.request_id] = list(c.token_ids)
    assert emitted == outputs, "replay emitted other tokens than the oracle"
    m = engine.metrics
    verified = m.num_verified_sequences
    row: dict[str, float] = {
        "tokens": sum(len(t) for t in outputs.values()),
        "steps": m.num_steps,
        "verify_steps": m.num_spec_steps,
        "skipped_steps": m.num_spec_skipped_steps,
        "draft_tokens": m.num_draft_tokens,
        "accepted_tokens": m.num_accepted_tokens,
        "mean_acceptance_length": (m.num_accepted_tokens + verified) / verified if verified else 0,
    }
    if proposer is not None:
        row["lookups"] = proposer.num_lookups
        row["matches"] = proposer.num_matches
    row["tokens_per_step"] = row["tokens"] / row["steps"]
    return row


def check_against_model(
    llm_dir: Path,
    oracle: Oracle,
    task: str,
    batch: int,
    spec: SpeculativeConfig,
    max_tokens: int,
    row: dict[str, float],
) -> None:
    """The real model with speculation on must give the replay's counters."""
    llm = LLM(llm_dir, dtype="float32", speculative=spec, max_num_seqs=256)
    task_spec = TASKS[task]
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=task_spec.ignore_eos)
    outs = llm.generate(task_spec.make_prompts(batch), params, use_tqdm=False)
    assert [list(o.token_ids) for o in outs] == oracle.output_token_ids[:batch]
    m = llm.metrics
    # accepted counts may differ by drafts verified after an EOS (dropped; the oracle has no
    # token there), so they are not compared
    real = (m.num_steps, m.num_spec_steps, m.num_draft_tokens)
    replayed = (row["steps"], row["verify_steps"], row["draft_tokens"])
    assert real == replayed, f"model {real} != replay {replayed}"
    print(f"  check {task} batch {batch}: model counters equal the replay's {real}", flush=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--k", default="4,8")
    ap.add_argument("--lookup-min", default="1,2")
    ap.add_argument("--lookup-max", default="3,4,5")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--adaptive-draft-length", action="store_true")
    ap.add_argument("--verify-cost", type=float, default=1.35)
    ap.add_argument("--oracle", default=None, help="JSON cache of the oracle outputs")
    ap.add_argument(
        "--dtype",
        default="float32",
        help="the oracle model's dtype (bfloat16 approximates what a GPU run generates)",
    )
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--show-texts", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    folder = model_dir(args.model) if args.model in MODEL_ASSETS else Path(args.model)
    llm = LLM(folder, dtype=args.dtype, max_num_seqs=256)
    batch_sizes = _ints(args.batch_sizes)
    cache: dict[str, Any] = {}
    if args.oracle and Path(args.oracle).exists():
        cache = json.loads(Path(args.oracle).read_text())
    results: list[dict[str, Any]] = []
    for task in args.tasks.split(","):
        key = f"{task}/{max(batch_sizes)}/{args.max_tokens}"
        if key not in cache:
            cache[key] = vars(make_oracle(llm, task, max(batch_sizes), args.max_tokens))
            if args.oracle:
                Path(args.oracle).write_text(json.dumps(cache))
        oracle = Oracle(**cache[key])
        if args.show_texts:
            for text in oracle.texts:
                print(f"--- {task}: {text!r}")
        ignore_eos = TASKS[task].ignore_eos
        for batch in batch_sizes:
            off = replay(llm, oracle, batch, None, args.max_tokens, ignore_eos)
            print(f"{task} batch {batch}: {off['tokens']:.0f} tokens, off {off['steps']:.0f} steps")
            settings = itertools.product(
                _ints(args.k), _ints(args.lookup_min), _ints(args.lookup_max)
            )
            for n, (k, lo, hi) in enumerate(settings):
                spec = SpeculativeConfig(
                    num_speculative_tokens=k,
                    prompt_lookup_min=lo,
                    prompt_lookup_max=hi,
                    adaptive_draft_length=args.adaptive_draft_length,
                )
                row = replay(llm, oracle, batch, spec, args.max_tokens, ignore_eos)
                plain = row["steps"] - row["verify_steps"]
                row["gpu_estimate"] = off["steps"] / (
                    plain + args.verify_cost * row["verify_steps"]
                )
                print(
                    f"  k={k} lookup {lo}-{hi}: {row['steps']:.0f} steps "
                    f"({row['verify_steps']:.0f} verify, {row['skipped_steps']:.0f} skipped), "
                    f"matches {row['matches']:.0f}/{row['lookups']:.0f}, "
                    f"L={row['mean_acceptance_length']:.2f}, "
                    f"accepted {row['accepted_tokens']:.0f}/{row['draft_tokens']:.0f} drafts, "
                    f"{row['tokens_per_step']:.2f} tok/step (off {off['tokens_per_step']:.2f}), "
                    f"GPU est x{row['gpu_estimate']:.2f}",
                    flush=True,
                )
                if args.check and n == 0:
                    check_against_model(folder, oracle, task, batch, spec, args.max_tokens, row)
                results.append(
                    {
                        "task": task,
                        "batch": batch,
                        "k": k,
                        "lookup_min": lo,
                        "lookup_max": hi,
                        "off_steps": off["steps"],
                        **row,
                    }
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
