"""Speculative decoding speed on a real model: output tokens/s with speculation off, n-gram
prompt lookup, and a draft model (when given), at several batch sizes, on a copy-heavy
workload; plus a cost model checked against it.

    python -m bench.spec_throughput --model PATH [--draft PATH] [--batch-sizes 1,4,16,64,256]
        [--task rewrite|extract|correct] [--k 4] [--lookup-min 2 --lookup-max 4]
        [--adaptive-draft-length]

Tasks (chat prompts over the prose paragraphs in PASSAGES):
- rewrite (default): "Rewrite this passage, fixing the typos" over one paragraph with letter
  swaps; EOS is ignored so every sequence emits exactly --max-tokens. SmolLM2-135M answers in
  ~65 tokens (copying the passage, typos and all) and then, past its end of turn, writes a new
  made-up conversation, so most of a 256-token run is not copying.
- extract: "Copy out every sentence of this text, in order, one per line, word for word" over
  four consecutive paragraphs (~300 prompt tokens); stops at EOS (SmolLM2: 150-255 tokens).
- correct: "Copy out the passage's sentences in order, one per line, fixing the typos" over two
  paragraphs with letter swaps; stops at EOS (SmolLM2: ~130-140 tokens; it keeps the typos).

Cost model: a verifying step emits L tokens per sequence (L = mean acceptance length) in
t_verify (propose + target pass over k+1 tokens), a plain step emits 1 in t_decode, so the
expected speedup is L * t_decode / t_verify.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine import LLM, SamplingParams

PASSAGES = [
    "The village sat at the edge of a wide river, and every morning the fishermen pushed their "
    "boats into the mist before the sun had cleared the hills. Their wives mended nets on the "
    "steps of the small stone houses and talked about the weather, the price of salt, and the "
    "new schoolmaster who had arrived from the city with three trunks of books.",
    "It was generally agreed that the new tenant of the manor was a man of large fortune and "
    "agreeable manners, though some of the older families thought him too fond of dancing. He "
    "gave a ball within a fortnight of his arrival, and the whole neighbourhood came to see "
    "whether his sisters were as handsome as had been reported.",
    "To make the bread, dissolve the yeast in warm water with a spoonful of sugar and wait until "
    "the surface is covered with foam. Add the flour a cup at a time, stirring after each "
    "addition, then knead the dough on a floured board for ten minutes until it is smooth and "
    "springs back when pressed with a finger.",
    "The committee met on Thursday to review the budget for the coming year. After a long "
    "discussion about the cost of repairing the library roof, the members voted to postpone the "
    "purchase of new computers and to ask the city council for a small grant to cover the "
    "remaining expenses of the summer reading program.",
    "When the storm finally passed, the children ran out into the garden to see what the wind "
    "had done. Two branches had fallen from the old apple tree, the fence by the road leaned "
    "dangerously to one side, and the chickens, who had spent the night in the barn, walked "
    "about the wet grass with an air of great offence.",
    "Our records show that your order was shipped on the fourth of the month by express mail "
    "and should have arrived within three working days. We are sorry to hear that the package "
    "has not reached you, and we have asked the carrier to trace it. If it cannot be found, we "
    "will send a replacement at no additional cost.",
    "The river rises in the mountains to the north, where the snow lies deep until late spring, "
    "and flows south through a narrow valley of pine forests before it reaches the plain. There "
    "it slows and widens, and for the last hundred miles of its course it winds lazily between "
    "fields of wheat and small market towns.",
    "She had always believed that a letter written in anger should be kept for a day before it "
    "was sent, and so she folded the pages, placed them in the drawer of her writing desk, and "
    "went out for a long walk along the cliffs, where the wind and the noise of the sea soon "
    "made her quarrel seem very small indeed.",
]


def add_typos(text: str, rng: random.Random, rate: float = 0.12) -> str:
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and rng.random() < rate:
            j = rng.randrange(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


Chat = list[dict[str, str]]


def make_prompts(n: int) -> list[Chat]:
    rng = random.Random(0)
    prompts = []
    for i in range(n):
        passage = add_typos(PASSAGES[i % len(PASSAGES)], rng)
        prompts.append(
            [{"role": "user", "content": "Rewrite this passage, fixing the typos:\n\n" + passage}]
        )
    return prompts


def _paragraphs(first: int, count: int) -> list[str]:
    return [PASSAGES[(first + j) % len(PASSAGES)] for j in range(count)]


def make_extract_prompts(n: int) -> list[Chat]:
    instruction = "Copy out every sentence of this text, in order, one per line, word for word:"
    return [
        [{"role": "user", "content": instruction + "\n\n" + " ".join(_paragraphs(i, 4))}]
        for i in range(n)
    ]


def make_correct_prompts(n: int) -> list[Chat]:
    rng = random.Random(0)
    instruction = "Copy out the passage's sentences in order, one per line, fixing the typos:"
    prompts = []
    for i in range(n):
        passage = " ".join(add_typos(p, rng) for p in _paragraphs(i, 2))
        prompts.append([{"role": "user", "content": instruction + "\n\n" + passage}])
    return prompts


@dataclass(frozen=True)
class Task:
    make_prompts: Callable[[int], list[Chat]]
    ignore_eos: bool  # False: a sequence stops at its end of turn, so only the answer counts


TASKS = {
    "rewrite": Task(make_prompts, ignore_eos=True),
    "extract": Task(make_extract_prompts, ignore_eos=False),
    "correct": Task(make_correct_prompts, ignore_eos=False),
}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(llm: LLM, prompts, max_tokens: int, ignore_eos: bool = True) -> dict:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=ignore_eos)
    llm.generate(prompts[:2], SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)  # warm
    before = llm.metrics.as_dict()
    _sync()
    started = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    _sync()
    seconds = time.perf_counter() - started
    after = llm.metrics.as_dict()
    delta = {k: after[k] - before[k] for k in after if isinstance(after[k], int | float)}
    tokens = sum(len(o.token_ids) for o in outs)
    verified = delta["num_verified_sequences"]
    return {
        "out_tok_s": tokens / seconds,
        "seconds": seconds,
        "steps": delta["num_steps"],
        "spec_steps": delta["num_spec_steps"],
        "spec_off_steps": delta["num_spec_off_steps"],
        "mean_acceptance_length": (delta["num_accepted_tokens"] + verified) / verified
        if verified
        else 0.0,
        "acceptance_rate": delta["num_accepted_tokens"] / delta["num_draft_tokens"]
        if delta["num_draft_tokens"]
        else 0.0,
        "step_ms": seconds / max(delta["num_steps"], 1) * 1000,
        "token_ids": [o.token_ids for o in outs],
        # a batch finishes with its longest answer: the straggler's steps bound the speedup
        "tokens_per_sequence": [len(o.token_ids) for o in outs],
    }


def profile(llm: LLM, prompts, max_tokens: int, ignore_eos: bool) -> None:
    """One run under torch.profiler: the top operators by host time and the device's busy
    time, to tell a host-bound step from a device-bound one."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        r = run(llm, prompts, max_tokens, ignore_eos)
    events = prof.key_averages()
    device_us = sum(e.self_device_time_total for e in events)
    print(
        f"  profile: {r['seconds'] * 1000:.1f} ms wall, {r['steps']} steps, device busy "
        f"{device_us / 1000:.1f} ms"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--draft", default=None)
    ap.add_argument("--batch-sizes", default="1,4,16,64,256")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--task", choices=sorted(TASKS), default="rewrite")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--lookup-min", type=int, default=2)
    ap.add_argument("--lookup-max", type=int, default=4)
    ap.add_argument("--adaptive-draft-length", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--profile",
        default=None,
        help="after timing, run this configuration once more per batch size under "
        "torch.profiler and print where host and device time go",
    )
    args = ap.parse_args()
    configs: dict[str, dict | None] = {
        "off": None,
        "ngram": {
            "method": "ngram",
            "k": args.k,
            "prompt_lookup_min": args.lookup_min,
            "prompt_lookup_max": args.lookup_max,
            "adaptive_draft_length": args.adaptive_draft_length,
        },
    }
    if args.draft:
        configs["draft"] = {"method": "draft", "model": args.draft, "k": args.k}
    engines = {
        # the engines live side by side on one card: each gets an equal share of its memory
        name: LLM(
            args.model,
            speculative=spec,
            max_num_seqs=256,
            gpu_memory_utilization=0.85 / len(configs),
        )
        for name, spec in configs.items()
    }
    task = TASKS[args.task]
    results: dict = {}
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = task.make_prompts(b)
        row: dict[str, dict] = {}
        for _ in range(args.repeats):  # alternate configs; keep each one's fastest run
            for name, llm in engines.items():
                r = run(llm, prompts, args.max_tokens, task.ignore_eos)
                if name not in row or r["out_tok_s"] > row[name]["out_tok_s"]:
                    row[name] = r
        base = row["off"]
        base_ids = base["token_ids"]
        for name, r in row.items():
            r["speedup"] = r["out_tok_s"] / base["out_tok_s"]
            r["identical_to_off"] = r.pop("token_ids") == base_ids
            # the cost model (acceptance length x plain step / speculative step) describes runs
            # that speculate on (nearly) every step; mixed runs are left without a prediction
            if name != "off" and r["spec_steps"] >= 0.9 * r["steps"]:
                r["predicted_speedup"] = (
                    r["mean_acceptance_length"] * base["step_ms"] / r["step_ms"]
                )
        results[b] = row
        if args.profile:
            profile(engines[args.profile], prompts, args.max_tokens, task.ignore_eos)
        print(
            f"batch {b:>4}: "
            + "  ".join(
                f"{n} {r['out_tok_s']:.0f} tok/s x{r['speedup']:.2f}"
                + (
                    f" (L={r['mean_acceptance_length']:.2f}, pred x{r['predicted_speedup']:.2f})"
                    if "predicted_speedup" in r
                    else ""
                )
                + ("" if r["identical_to_off"] else " MISMATCH")
                + (f" [tokens/seq {r['tokens_per_sequence']}]" if b <= 4 else "")
                for n, r in row.items()
            ),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
