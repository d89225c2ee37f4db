"""Speculative decoding acceptance on a real target/draft pair, and greedy parity with it off.

    python -m bench.spec_acceptance --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \\
        [--num-prompts 30 --max-tokens 64 --k 4 --dtype float32 --device cpu] [--json PATH]

Runs the same chat prompts (half prose: explanations, stories, rewrites; half code: write,
complete, fix a function) greedily through `engine.LLM` three times, each with a freshly loaded
target: speculation off, a draft model (method "draft") and prompt lookup (method "ngram").
Prose and code go through separate `generate` calls, so the counters are split per kind.

Reports per configuration and kind: generated tokens, wall time of `generate`, output tokens/s,
draft tokens proposed and accepted, acceptance rate, mean acceptance length (tokens emitted per
sequence per verifying step), and the time spent proposing. Then checks that every speculative
run emitted exactly the tokens of the run without speculation (greedy verification keeps the
target's argmax), listing each differing completion with its first differing position and the
target's top-2 logprob gap there (requests ask for logprobs=2 for this; tokens are unchanged).

The engine's cost gate (`verify_cost_ratio`) may skip verifying a step's drafts; the default
here, 1.0, verifies every proposal so that acceptance is measured over all drafts.

`--target` / `--draft` take a model asset name (`batchgen models fetch NAME`) or a folder.
On the CPU the timings say little about the GPU speed goal: there a decode step is bound by
reading weights, and verifying k drafts costs about one step; here every verified draft costs
compute.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from engine.llm import LLM
from engine.metrics import RunMetrics
from engine.model_assets import MODEL_ASSETS, is_fetched, model_dir
from engine.sampling_params import SamplingParams

# Chat requests, user turn only (the model's template adds its system prompt).
PROSE_PROMPTS = (
    "Explain why the sky is blue in a short paragraph.",
    "Explain how a refrigerator keeps food cold.",
    "What is the difference between a virus and a bacterium?",
    "Explain what inflation is and why central banks raise interest rates to fight it.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Write the opening paragraph of a mystery novel set in a snowed-in mountain hotel.",
    "Tell a short bedtime story about a fox who is afraid of the dark.",
    "Write a short fable about a tortoise and an eagle, with a moral at the end.",
    "Rewrite this sentence in plain English: 'Pursuant to the aforementioned stipulations, the "
    "party of the first part shall remit payment forthwith upon receipt of the invoice.'",
    "Rewrite the following paragraph to be more formal: 'Hey team, the meeting got moved to "
    "Thursday because half of us are out. Bring your notes and we'll sort out the budget stuff "
    "then. Thanks!'",
    "Fix the grammar and spelling: 'Their going to the libary tomorow to returns the books "
    "they borrowed last weak, but they dont know were the receipt is.'",
    "Summarize in two sentences: 'The printing press, developed by Johannes Gutenberg around "
    "1440, made books far cheaper to produce. Within decades, printed material spread across "
    "Europe, literacy rose, and ideas travelled faster than ever before, helping to fuel the "
    "Renaissance and the Reformation.'",
    "Write a polite email to a landlord asking for a broken heater to be repaired.",
    "Describe the water cycle for a ten-year-old.",
    "Give three tips for staying focused while working from home, one sentence each.",
    "Explain the rules of chess for the knight and the bishop.",
)

CODE_PROMPTS = (
    "Write a Python function that checks whether a string is a palindrome, ignoring case and "
    "punctuation.",
    "Write a Python function `merge_sorted(a, b)` that merges two sorted lists into one sorted "
    "list without using sort().",
    "Write a JavaScript function that debounces another function by a given number of "
    "milliseconds.",
    "Write a SQL query that returns the five customers with the highest total order amount from "
    "tables customers(id, name) and orders(id, customer_id, amount).",
    "Write a C function that reverses a null-terminated string in place.",
    "Write a Python class `LRUCache` with get and put methods, using OrderedDict.",
    "Complete this Python function:\n\n```python\ndef word_counts(text: str) -> dict[str, int]:\n"
    '    """Return how often each lowercase word occurs in text."""\n```',
    "Complete this function:\n\n```python\ndef binary_search(items, target):\n"
    '    """Return the index of target in the sorted list items, or -1."""\n'
    "    lo, hi = 0, len(items) - 1\n```",
    "Complete this Rust function:\n\n```rust\nfn fibonacci(n: u64) -> u64 {\n    // iterative, "
    "no recursion\n```",
    "Fix the bug in this function:\n\n```python\ndef average(numbers):\n    total = 0\n"
    "    for n in numbers:\n        total += n\n    return total / len(numbers) - 1\n```",
    "Fix the off-by-one error:\n\n```python\ndef last_n(items, n):\n"
    "    return items[len(items) - n - 1:]\n```",
    "This function never terminates for some inputs. Fix it:\n\n```python\ndef gcd(a, b):\n"
    "    while b != 0:\n        a = b\n        b = a % b\n    return a\n```",
    "Fix this JavaScript so it prints 0, 1, 2 instead of 3, 3, 3:\n\n```javascript\n"
    "for (var i = 0; i < 3; i++) {\n  setTimeout(function () { console.log(i); }, 100);\n}\n```",
    "Add type hints and a docstring to this function:\n\n```python\ndef scale(points, factor):\n"
    "    return [(x * factor, y * factor) for x, y in points]\n```",
    "Write a bash one-liner that counts the lines of every .py file under the current folder "
    "and prints the total.",
    "Write a Python function that reads a CSV file and returns the sum of the column named "
    "'price'.",
)

KINDS = ("prose", "code")
WARMUP_PARAMS = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


def select_prompts(num_prompts: int) -> dict[str, list[str]]:
    """The first ceil(n/2) prose and floor(n/2) code prompts."""
    num_prose = (num_prompts + 1) // 2
    num_code = num_prompts // 2
    if num_prose > len(PROSE_PROMPTS) or num_code > len(CODE_PROMPTS):
        raise ValueError(
            f"--num-prompts must be at most {2 * min(len(PROSE_PROMPTS), len(CODE_PROMPTS))}"
        )
    return {"prose": list(PROSE_PROMPTS[:num_prose]), "code": list(CODE_PROMPTS[:num_code])}


def resolve_model(name_or_path: str) -> str:
    """A fetched asset's folder, or the argument itself when it is not an asset name."""
    if name_or_path in MODEL_ASSETS:
        if not is_fetched(name_or_path):
            raise SystemExit(f"{name_or_path} is not fetched: batchgen models fetch {name_or_path}")
        return str(model_dir(name_or_path))
    return name_or_path


@dataclass(frozen=True)
class KindResult:
    """One configuration on one kind of prompt."""

    num_prompts: int
    num_generated_tokens: int  # tokens in the completions
    # the engine's counter: it also counts verified tokens dropped after a stop (EOS)
    engine_num_generated_tokens: int
    wall_seconds: float
    num_draft_tokens: int
    num_accepted_tokens: int
    num_verified_sequences: int
    num_spec_steps: int
    num_spec_skipped_steps: int  # steps whose drafts the cost gate did not verify
    num_steps: int
    prefill_seconds: float  # engine steps that ran any prompt tokens
    decode_seconds: float  # engine steps that only decoded (verify steps included)
    spec_propose_seconds: float
    spec_verify_seconds: float

    @property
    def out_tokens_per_second(self) -> float:
        return self.num_generated_tokens / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        if not self.num_verified_sequences:
            return 0.0
        return (
            self.num_accepted_tokens + self.num_verified_sequences
        ) / self.num_verified_sequences

    @classmethod
    def total(cls, parts: list[KindResult]) -> KindResult:
        return cls(**{f.name: sum(getattr(p, f.name) for p in parts) for f in fields(cls)})


@dataclass(frozen=True)
class ConfigResult:
    name: str
    load_seconds: float
    by_kind: dict[str, KindResult]
    token_ids: dict[str, list[tuple[int, ...]]]  # kind -> completion tokens in prompt order
    texts: dict[str, list[str]]
    # kind -> per completion, per token: the two most likely tokens' logprobs (ids, values)
    top2: dict[str, list[list[tuple[tuple[int, ...], tuple[float, ...]]]]]

    @property
    def overall(self) -> KindResult:
        return KindResult.total(list(self.by_kind.values()))


def _counters(metrics: RunMetrics) -> dict[str, float]:
    return {f.name: getattr(metrics, f.name) for f in fields(metrics)}


def run_config(
    name: str,
    target: str,
    speculative: dict[str, Any] | None,
    prompts: dict[str, list[str]],
    params: SamplingParams,
    dtype: str,
    device: str,
) -> ConfigResult:
    """Load the target (and proposer) afresh, warm it up, generate each kind in its own call,
    and take the counters' deltas around each call. The LLM is dropped before returning."""
    started = time.perf_counter()
    llm = LLM(target, dtype=dtype, device=device, speculative=speculative)
    load_seconds = time.perf_counter() - started
    # One short request first, so one-time costs (allocator growth, lazy init) stay out of the
    # timed calls; the counters are read as deltas, so it does not count either.
    llm.generate([[{"role": "user", "content": "Say hello."}]], WARMUP_PARAMS, use_tqdm=False)
    by_kind: dict[str, KindResult] = {}
    token_ids: dict[str, list[tuple[int, ...]]] = {}
    texts: dict[str, list[str]] = {}
    top2: dict[str, list[list[tuple[tuple[int, ...], tuple[float, ...]]]]] = {}
    for kind in KINDS:
        chats = [[{"role": "user", "content": p}] for p in prompts[kind]]
        before = _counters(llm.metrics)
        started = time.perf_counter()
        completions = llm.generate(chats, params, use_tqdm=False)
        wall = time.perf_counter() - started
        after = _counters(llm.metrics)
        failed = [c.error for c in completions if not c.ok]
        if failed:
            raise RuntimeError(f"{name}/{kind}: {len(failed)} request(s) failed: {failed[0]}")
        delta = {k: after[k] - before[k] for k in after}
        by_kind[kind] = KindResult(
            num_prompts=len(chats),
            num_generated_tokens=sum(len(c.token_ids) for c in completions),
            engine_num_generated_tokens=int(delta["num_generated_tokens"]),
            wall_seconds=wall,
            num_draft_tokens=int(delta["num_draft_tokens"]),
            num_accepted_tokens=int(delta["num_accepted_tokens"]),
            num_verified_sequences=int(delta["num_verified_sequences"]),
            num_spec_steps=int(delta["num_spec_steps"]),
            num_spec_skipped_steps=int(delta["num_spec_skipped_steps"]),
            num_steps=int(delta["num_steps"]),
            prefill_seconds=delta["prefill_seconds"],
            decode_seconds=delta["decode_seconds"],
            spec_propose_seconds=delta["spec_propose_seconds"],
            spec_verify_seconds=delta["spec_verify_seconds"],
        )
        token_ids[kind] = [c.token_ids for c in completions]
        texts[kind] = [c.text for c in completions]
        top2[kind] = [
            [(tuple(lp.top), tuple(lp.top.values())) for lp in c.logprobs or ()]
            for c in completions
        ]
        print(f"  {name} / {kind}: {json.dumps(asdict(by_kind[kind]))}", flush=True)
    del llm
    gc.collect()
    return ConfigResult(name, load_seconds, by_kind, token_ids, texts, top2)


@dataclass(frozen=True)
class Mismatch:
    config: str
    kind: str
    prompt_index: int
    first_diff: int  # first position where the tokens differ (or the shorter length)
    reference_len: int
    spec_len: int
    # top-2 logprob gap (first minus second) at first_diff in each run: a near-zero gap is a
    # near-tie that rounding differences between batch shapes can flip
    reference_top2_gap: float | None
    spec_top2_gap: float | None
    reference_text: str
    spec_text: str


def _top2_gap(result: ConfigResult, kind: str, index: int, position: int) -> float | None:
    rows = result.top2[kind][index]
    if position >= len(rows) or len(rows[position][1]) < 2:
        return None
    first, second = sorted(rows[position][1], reverse=True)[:2]
    return first - second


def find_mismatches(reference: ConfigResult, other: ConfigResult) -> list[Mismatch]:
    found = []
    for kind in KINDS:
        pairs = zip(
            reference.token_ids[kind],
            other.token_ids[kind],
            reference.texts[kind],
            other.texts[kind],
            strict=True,
        )
        for i, (ref, got, ref_text, got_text) in enumerate(pairs):
            if ref == got:
                continue
            first = next(
                (j for j, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b),
                min(len(ref), len(got)),
            )
            found.append(
                Mismatch(
                    other.name,
                    kind,
                    i,
                    first,
                    len(ref),
                    len(got),
                    _top2_gap(reference, kind, i, first),
                    _top2_gap(other, kind, i, first),
                    ref_text,
                    got_text,
                )
            )
    return found


def print_report(results: list[ConfigResult], mismatches: list[Mismatch], k: int) -> None:
    print(
        f"\n| config | prompts | generated tokens | wall s | out tok/s | steps | draft tokens "
        f"(k={k}) | accepted | acceptance rate | mean acceptance length | propose s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for label, s in [*r.by_kind.items(), ("all", r.overall)]:
            spec = r.name != "off"
            print(
                f"| {r.name} / {label} | {s.num_prompts} | {s.num_generated_tokens} "
                f"| {s.wall_seconds:.1f} | {s.out_tokens_per_second:.2f} | {s.num_steps} "
                f"| {s.num_draft_tokens if spec else '-'} "
                f"| {s.num_accepted_tokens if spec else '-'} "
                f"| {f'{s.acceptance_rate:.1%}' if spec else '-'} "
                f"| {f'{s.mean_acceptance_length:.2f}' if spec else '-'} "
                f"| {f'{s.spec_propose_seconds:.1f}' if spec else '-'} |"
            )
    print("\nload seconds: " + ", ".join(f"{r.name} {r.load_seconds:.1f}" for r in results))
    reference = results[0]
    num_total = sum(len(v) for v in reference.token_ids.values())
    for r in results[1:]:
        mine = [m for m in mismatches if m.config == r.name]
        print(f"greedy parity {r.name} vs off: {num_total - len(mine)}/{num_total} identical")
        for m in mine:
            print(
                f"  MISMATCH {m.kind}[{m.prompt_index}]: first differing token at {m.first_diff}"
                f" (lengths off {m.reference_len}, {r.name} {m.spec_len}; top-2 logprob gap"
                f" there: off {m.reference_top2_gap}, {r.name} {m.spec_top2_gap})\n"
                f"    off: {m.reference_text!r}\n    {r.name}: {m.spec_text!r}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b", help="asset name or folder")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b", help="asset name or folder")
    ap.add_argument("--num-prompts", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="draft tokens per step")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="draft,ngram", help="speculative runs after 'off'")
    ap.add_argument(
        "--verify-cost-ratio",
        type=float,
        default=1.0,
        help="SpeculativeConfig.verify_cost_ratio; 1.0 verifies every proposal, so acceptance "
        "is measured over all drafts, not only those of sequences the cost gate trusts",
    )
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args(argv)
    prompts = select_prompts(args.num_prompts)
    target = resolve_model(args.target)
    configs: list[tuple[str, dict[str, Any] | None]] = [("off", None)]
    for method in filter(None, args.methods.split(",")):
        options: dict[str, Any] = {
            "method": method,
            "k": args.k,
            "verify_cost_ratio": args.verify_cost_ratio,
        }
        if method == "draft":
            options["model"] = resolve_model(args.draft)
            options["draft_cost_ratio"] = 0.0  # acceptance is measured on every step
        configs.append((method, options))
    # logprobs=2 (the top two) only to explain mismatches; it does not change the tokens.
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, logprobs=2)
    results: list[ConfigResult] = []
    mismatches: list[Mismatch] = []
    for name, spec in configs:
        print(f"running {name} ...", flush=True)
        results.append(run_config(name, target, spec, prompts, params, args.dtype, args.device))
        if len(results) > 1:
            mismatches += find_mismatches(results[0], results[-1])
        if args.json:  # after every configuration, so a cut-short run keeps what it measured
            write_json(Path(args.json), vars(args), results, mismatches)
    print_report(results, mismatches, args.k)
    return 0


def write_json(
    path: Path, args: dict[str, Any], results: list[ConfigResult], mismatches: list[Mismatch]
) -> None:
    payload = {
        "args": args,
        "results": [
            {
                "name": r.name,
                "load_seconds": r.load_seconds,
                "by_kind": {k: asdict(v) for k, v in r.by_kind.items()},
                "token_ids": r.token_ids,
                "texts": r.texts,
            }
            for r in results
        ],
        "mismatches": [asdict(m) for m in mismatches],
    }
    path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
