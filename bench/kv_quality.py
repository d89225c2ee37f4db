"""Quality of the INT8 KV cache against the unquantized cache on a real model, on the CPU.

    python -m bench.kv_quality [--num-prompts 50 --gen-len 128 --dtype float32] [--json PATH]

Loads SmolLM2-135M-Instruct twice through `engine.LLM` (kv_cache_dtype "auto" and "int8"),
generates gen_len greedy tokens per prompt with the unquantized cache (EOS ignored), then, for
each lossy cache:

- teacher-forced: the prompt, then the unquantized run's tokens one decode step at a time, go
  through the model over a fresh paged cache of that kind, with logits at every generated
  position. Each decode reads every earlier key/value back from the paged cache, so each
  position sees quantized K/V exactly as generation would. Reports KL(unquantized || lossy) of
  the next-token distributions and top-1 agreement over all positions.
- free-running: greedy generation with that cache; reports how many tokens match the
  unquantized run before the first divergence.
- memory: KV bytes per token (kv_bytes_per_block / block_size), checked against the bytes the
  engine allocated, and the blocks each engine got from the same CPU cache budget.

With an fp32 model a second lossy cache runs as a yardstick: the same model over a bf16 cache
(what a bf16 deployment stores), built from the same engine parts.

Targets from the issue: mean KL < 0.01, greedy agreement >= 95% of tokens before the first
divergence, INT8 holding >= 1.9x the tokens in the same memory.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from engine.forward_batch import ForwardBatch
from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.model_assets import model_dir
from engine.model_runner import ModelRunner, allocate_kv_caches, kv_bytes_per_block
from engine.output_processor import OutputProcessor
from engine.request import Request
from engine.sampling_params import SamplingParams

MEAN_KL_TARGET = 0.01
GREEDY_AGREEMENT_TARGET = 0.95
CAPACITY_RATIO_TARGET = 1.9
KL_CHUNK_ROWS = 512  # float64 rows of the vocabulary at a time: ~200 MB per temporary

# Chat requests (through the model's chat template): questions, instructions, code, writing.
CHAT_PROMPTS = (
    "What causes the seasons on Earth?",
    "Explain how a bicycle stays upright when it is moving.",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Give me three tips for sleeping better.",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "What is the difference between weather and climate?",
    "Write a short poem about the ocean at night.",
    "How do vaccines train the immune system?",
    "Translate 'Where is the train station?' into French and Spanish.",
    "Write a SQL query that finds the ten customers with the highest total order value.",
    "Why is the sky blue?",
    "Describe the water cycle for a ten-year-old.",
    "What are the pros and cons of working from home?",
    "Write a JavaScript function that removes duplicates from an array.",
    "Explain what a hash table is and why lookups are fast.",
    "Suggest a simple vegetarian dinner I can cook in twenty minutes.",
    "What happened during the French Revolution?",
    "Write a polite email asking my manager for a day off next Friday.",
    "How does compound interest work? Give an example.",
    "List five countries in South America and their capitals.",
    "Explain recursion using an everyday analogy.",
    "What should I pack for a three-day hiking trip?",
    "Write a haiku about autumn leaves.",
    "How do airplanes generate lift?",
    "Write a bash command that counts the lines in every .txt file in a folder.",
    "What is photosynthesis and why does it matter?",
    "Give me a short motivational message for a student before an exam.",
    "Explain the difference between a list and a tuple in Python.",
    "What are black holes made of?",
    "Write a short story about a robot who learns to paint.",
    "How can I improve my public speaking skills?",
    "Explain supply and demand with a simple example.",
    "Write a function in C that reverses a string in place.",
    "What is the role of the mitochondria in a cell?",
    "Describe a typical day in the life of a medieval farmer.",
    "What are some good habits for keeping a clean codebase?",
    "Explain what machine learning is to someone who has never programmed.",
    "Write a limerick about a cat who loves coffee.",
    "How do I make a good first impression at a job interview?",
    "Why do leaves change color in the fall?",
)

# Raw text continuations (no chat template): prose, documentation, code.
TEXT_PROMPTS = (
    "The history of the printing press begins in the fifteenth century, when",
    "Once upon a time, in a small village at the edge of a great forest, there lived",
    'def merge_sort(items):\n    """Sort a list with merge sort."""\n',
    "The mitochondrion is an organelle found in most eukaryotic cells. Its main function is",
    "Dear hiring committee,\n\nI am writing to apply for the position of",
    "Installation\n============\n\nTo install the package, run the following command:",
    "The three most important things to remember when learning a new language are",
    "class Stack:\n    def __init__(self):\n",
    "In economics, inflation refers to",
    "The recipe is simple. First, preheat the oven to 180 degrees. Then",
    "Chapter 1\n\nThe rain had not stopped for three days when the detective",
    "Abstract. We study the problem of",
)


@dataclass(frozen=True)
class QualityReport:
    """One lossy cache against the unquantized one."""

    name: str
    num_prompts: int
    gen_len: int
    num_positions: int
    mean_kl: float
    max_kl: float
    p99_kl: float
    top1_agreement: float
    greedy_agreement: float  # tokens before the first divergence / all generated tokens
    mean_first_divergence: float  # position of the first differing token (gen_len if none)
    num_identical_completions: int


@dataclass(frozen=True)
class MemoryReport:
    block_size: int
    auto_bytes_per_token: int  # in the model dtype of this run
    int8_bytes_per_token: int
    bf16_bytes_per_token: int  # what a bf16 deployment stores
    ratio_vs_run_dtype: float
    ratio_vs_bf16: float
    auto_num_blocks: int  # blocks each engine got from the same CPU cache budget
    int8_num_blocks: int
    allocated_bytes_match: bool


@dataclass(frozen=True)
class LossyCache:
    """A cache to compare against the unquantized one: the engine that free-runs over it and the
    storage dtype of a fresh teacher-forced cache of the same kind (int8 means INT8 codes)."""

    name: str
    engine: LLMEngine
    storage_dtype: torch.dtype


def build_prompts(llm: LLM, num_prompts: int) -> list[list[int]]:
    """num_prompts token lists: chat requests and text continuations, interleaved, cycling
    with a numbered variant once the hand-written ones run out."""
    base: list[tuple[str, str]] = []
    chats, texts = list(CHAT_PROMPTS), list(TEXT_PROMPTS)
    while chats or texts:
        for _ in range(3):
            if chats:
                base.append(("chat", chats.pop(0)))
        if texts:
            base.append(("text", texts.pop(0)))
    prompts = []
    for i in range(num_prompts):
        kind, text = base[i % len(base)]
        if i >= len(base):
            text = f"{text} (variant {i // len(base)})"
        if kind == "chat":
            prompts.append(llm.encoder.encode_messages([{"role": "user", "content": text}]))
        else:
            prompts.append(llm.encoder.encode_text(text))
    return prompts


def bf16_kv_engine(llm: LLM) -> LLMEngine:
    """An engine over llm's model and config whose KV cache is stored in bf16 (the attention
    reference upcasts it to the model dtype on read)."""
    config = llm.config
    runner = llm.engine.runner
    num_blocks = llm.engine.kv_cache.num_blocks
    caches = allocate_kv_caches(
        config.model, config.cache, num_blocks, torch.bfloat16, runner.device
    )
    bf16_runner = ModelRunner(runner.model, caches, config.cache.block_size, runner.device)
    return LLMEngine(config, bf16_runner, num_blocks, OutputProcessor(llm.tokenizer), frozenset())


def greedy(engine: LLMEngine, prompts: list[list[int]], gen_len: int) -> list[list[int]]:
    """gen_len greedy tokens per prompt (EOS ignored), in prompt order."""
    params = SamplingParams(max_tokens=gen_len, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        assert engine.add_request(Request(i, tuple(prompt), params, arrival_index=i)) is None
    completions = []
    while engine.num_unfinished:
        completions.extend(engine.step())
    completions.sort(key=lambda c: c.index)
    assert all(c.ok and len(c.token_ids) == gen_len for c in completions)
    return [list(c.token_ids) for c in completions]


@torch.inference_mode()
def teacher_forced_logprobs(
    llm: LLM,
    storage_dtype: torch.dtype,
    prompts: list[list[int]],
    targets: list[list[int]],
    batch_seqs: int,
) -> torch.Tensor:
    """Log-probabilities of the next token at every target position: [sum(len(t)), vocab] fp32.

    Steps as generation takes them, over a fresh paged cache (storage_dtype, or INT8 codes
    when llm's kv_cache_dtype is int8; the engine's own cache is left untouched): the prompts in
    one prefill (whose rows attend to their own unquantized keys, as the engine's chunks do),
    whose last rows predict targets[0]; then targets[:-1] one decode step at a time, each
    reading every earlier key and value back from the cache.
    """
    config = llm.config
    model = llm.engine.runner.model
    device = torch.device(config.device)
    block_size = config.cache.block_size
    out = []
    for first in range(0, len(prompts), batch_seqs):
        last = min(first + batch_seqs, len(prompts))
        group = range(first, last)
        lens = [len(prompts[i]) + len(targets[i]) - 1 for i in group]
        blocks_per_seq = [-(-n // block_size) for n in lens]
        kv = allocate_kv_caches(
            config.model, config.cache, sum(blocks_per_seq), storage_dtype, device
        )
        # Sequence s owns the next blocks_per_seq[s] blocks, its tokens in slot order.
        starts = [0]
        for n in blocks_per_seq:
            starts.append(starts[-1] + n)
        block_tables = torch.zeros(len(lens), max(blocks_per_seq), dtype=torch.int32)
        for s, n in enumerate(blocks_per_seq):
            block_tables[s, :n] = torch.arange(starts[s], starts[s] + n)
        per_seq: list[list[torch.Tensor]] = [[] for _ in group]
        # Step t feeds each sequence's tokens up to (and predicting from) position len(prompt)+t-1.
        for t in range(max(len(targets[i]) for i in group)):
            seqs = [s for s, i in enumerate(group) if t < len(targets[i])]
            chunks = [prompts[group[s]] if t == 0 else [targets[group[s]][t - 1]] for s in seqs]
            first_pos = [0 if t == 0 else len(prompts[group[s]]) + t - 1 for s in seqs]
            cu = [0]
            for chunk in chunks:
                cu.append(cu[-1] + len(chunk))
            positions = [
                p + j for p, c in zip(first_pos, chunks, strict=True) for j in range(len(c))
            ]
            owner = [s for s, c in zip(seqs, chunks, strict=True) for _ in c]
            batch = ForwardBatch(
                input_ids=torch.tensor([x for c in chunks for x in c], device=device),
                positions=torch.tensor(positions, dtype=torch.int64, device=device),
                slot_mapping=torch.tensor(
                    [starts[s] * block_size + p for s, p in zip(owner, positions, strict=True)],
                    dtype=torch.int64,
                    device=device,
                ),
                block_tables=block_tables[seqs].to(device),
                cu_query_lens=torch.tensor(cu, dtype=torch.int32, device=device),
                context_lens=torch.tensor(
                    [p + len(c) for p, c in zip(first_pos, chunks, strict=True)],
                    dtype=torch.int32,
                    device=device,
                ),
                logits_indices=torch.tensor(cu[1:], dtype=torch.int64, device=device) - 1,
                num_decode_seqs=len(seqs) if t > 0 else 0,
            )
            logits = model.compute_logits(model(batch, kv))  # [len(seqs), vocab] fp32
            for row, s in enumerate(seqs):
                per_seq[s].append(torch.log_softmax(logits[row], dim=-1).cpu())
        out.extend(torch.stack(rows) for rows in per_seq)
        del kv
    return torch.cat(out)


def kl_divergence(ref_logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(ref || other) per row, in float64, a chunk of rows at a time: [num_rows]."""
    kl = []
    for ref, other in zip(
        ref_logprobs.split(KL_CHUNK_ROWS), other_logprobs.split(KL_CHUNK_ROWS), strict=True
    ):
        ref64 = ref.double()
        kl.append((ref64.exp() * (ref64 - other.double())).sum(-1))
    return torch.cat(kl)


def compare(
    name: str,
    ref_logprobs: torch.Tensor,
    other_logprobs: torch.Tensor,
    ref_tokens: list[list[int]],
    other_tokens: list[list[int]],
) -> QualityReport:
    kl = kl_divergence(ref_logprobs, other_logprobs)  # [num_positions]
    gen_len = len(ref_tokens[0])
    first_divergence = []
    for ref, other in zip(ref_tokens, other_tokens, strict=True):
        diverged = [i for i, (a, b) in enumerate(zip(ref, other, strict=True)) if a != b]
        first_divergence.append(diverged[0] if diverged else gen_len)
    return QualityReport(
        name=name,
        num_prompts=len(ref_tokens),
        gen_len=gen_len,
        num_positions=kl.numel(),
        mean_kl=kl.mean().item(),
        max_kl=kl.max().item(),
        p99_kl=kl.quantile(0.99).item(),
        top1_agreement=(ref_logprobs.argmax(-1) == other_logprobs.argmax(-1))
        .double()
        .mean()
        .item(),
        greedy_agreement=sum(first_divergence) / (gen_len * len(ref_tokens)),
        mean_first_divergence=sum(first_divergence) / len(first_divergence),
        num_identical_completions=sum(d == gen_len for d in first_divergence),
    )


def memory_report(auto: LLM, int8: LLM) -> MemoryReport:
    model, block_size = auto.config.model, auto.config.cache.block_size
    per_token = {
        name: kv_bytes_per_block(model, llm.config.cache, llm.config.dtype) // block_size
        for name, llm in (("auto", auto), ("int8", int8))
    }
    bf16 = kv_bytes_per_block(model, auto.config.cache, torch.bfloat16) // block_size
    allocated_match = True
    for name, llm in (("auto", auto), ("int8", int8)):
        caches = llm.engine.runner.kv_caches
        allocated = sum(
            t.nbytes
            for layer in caches
            for t in (layer.k_cache, layer.v_cache, layer.k_scale, layer.v_scale)
            if t is not None
        )
        allocated_match &= (
            allocated == per_token[name] * llm.engine.kv_cache.num_blocks * block_size
        )
    return MemoryReport(
        block_size=block_size,
        auto_bytes_per_token=per_token["auto"],
        int8_bytes_per_token=per_token["int8"],
        bf16_bytes_per_token=bf16,
        ratio_vs_run_dtype=per_token["auto"] / per_token["int8"],
        ratio_vs_bf16=bf16 / per_token["int8"],
        auto_num_blocks=auto.engine.kv_cache.num_blocks,
        int8_num_blocks=int8.engine.kv_cache.num_blocks,
        allocated_bytes_match=allocated_match,
    )


def print_report(
    reports: list[QualityReport], m: MemoryReport, dtype: str, seconds: dict[str, float]
) -> None:
    q = reports[0]
    print(
        f"\nLossy KV caches vs the unquantized ({dtype}) cache, {dtype} model: {q.num_prompts} "
        f"prompts x {q.gen_len} greedy tokens, {q.num_positions} teacher-forced positions"
    )

    def cell(text: str, ok: bool | None = None) -> str:
        return text if ok is None else f"{text} {'ok' if ok else 'FAIL'}"

    rows = [
        (
            "mean KL(auto || lossy)",
            f"< {MEAN_KL_TARGET}",
            [cell(f"{r.mean_kl:.2e}", r.mean_kl < MEAN_KL_TARGET) for r in reports],
        ),
        ("p99 KL", "", [cell(f"{r.p99_kl:.2e}") for r in reports]),
        ("max KL", "", [cell(f"{r.max_kl:.2e}") for r in reports]),
        ("top-1 agreement, teacher-forced", "", [cell(f"{r.top1_agreement:.2%}") for r in reports]),
        (
            "greedy agreement before 1st divergence",
            f">= {GREEDY_AGREEMENT_TARGET:.0%}",
            [
                cell(f"{r.greedy_agreement:.2%}", r.greedy_agreement >= GREEDY_AGREEMENT_TARGET)
                for r in reports
            ],
        ),
        (
            "mean first-divergence position",
            "",
            [cell(f"{r.mean_first_divergence:.1f}") for r in reports],
        ),
        (
            "identical completions",
            "",
            [cell(f"{r.num_identical_completions}/{r.num_prompts}") for r in reports],
        ),
    ]
    print(f"{'metric':<42}{'target':>9}" + "".join(f"{r.name:>18}" for r in reports))
    for name, target, cells in rows:
        print(f"{name:<42}{target:>9}" + "".join(f"{c:>18}" for c in cells))
    print(
        f"\nKV bytes per token: {dtype} {m.auto_bytes_per_token}, int8 {m.int8_bytes_per_token} "
        f"(codes + fp32 scales), bf16 {m.bf16_bytes_per_token}"
    )
    for name, ratio in ((dtype, m.ratio_vs_run_dtype), ("bfloat16", m.ratio_vs_bf16)):
        passed = "ok" if ratio >= CAPACITY_RATIO_TARGET else "FAIL"
        print(
            f"tokens per byte, int8 / {name}: {ratio:.3f}x (target >= {CAPACITY_RATIO_TARGET}x) {passed}"
        )
    print(
        f"blocks from the same CPU budget: {dtype} {m.auto_num_blocks}, int8 "
        f"{m.int8_num_blocks}; allocated bytes = kv_bytes_per_block: {m.allocated_bytes_match}"
    )
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the smollm2 asset)")
    ap.add_argument("--num-prompts", type=int, default=50)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-seqs", type=int, default=10, help="sequences per teacher-forced batch")
    ap.add_argument("--no-bf16-baseline", action="store_true", help="skip the bf16 KV yardstick")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args(argv)
    path = args.model or str(model_dir("smollm2"))
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any], *fn_args: Any) -> Any:
        started = time.perf_counter()
        result = fn(*fn_args)
        seconds[name] = time.perf_counter() - started
        return result

    def load(kv_cache_dtype: str) -> LLM:
        return LLM(
            path,
            dtype=args.dtype,
            device=args.device,
            enable_prefix_caching=False,
            kv_cache_dtype=kv_cache_dtype,
            gpu_memory_utilization=0.4,  # two engines share the card
        )

    auto = timed("load auto", load, "auto")
    int8 = timed("load int8", load, "int8")
    lossy = [LossyCache("int8", int8.engine, torch.int8)]
    if args.dtype == "float32" and not args.no_bf16_baseline:
        lossy.append(LossyCache("bf16 (yardstick)", bf16_kv_engine(auto), torch.bfloat16))
    prompts = build_prompts(auto, args.num_prompts)
    ref_tokens = timed("generate auto", greedy, auto.engine, prompts, args.gen_len)
    ref_logprobs = timed(
        "teacher-forced auto",
        teacher_forced_logprobs,
        auto,
        auto.config.dtype,
        prompts,
        ref_tokens,
        args.batch_seqs,
    )
    # Harness check: the teacher-forced rows line up with the tokens they predict.
    generated = torch.tensor([t for seq in ref_tokens for t in seq])
    self_agreement = (ref_logprobs.argmax(-1) == generated).double().mean().item()
    reports = []
    for cache in lossy:
        tokens = timed(f"generate {cache.name}", greedy, cache.engine, prompts, args.gen_len)
        # The INT8 LLM allocates INT8 caches whatever the storage dtype; the others store it.
        llm = int8 if cache.storage_dtype is torch.int8 else auto
        logprobs = timed(
            f"teacher-forced {cache.name}",
            teacher_forced_logprobs,
            llm,
            cache.storage_dtype,
            prompts,
            ref_tokens,
            args.batch_seqs,
        )
        reports.append(compare(cache.name, ref_logprobs, logprobs, ref_tokens, tokens))
        del logprobs
    memory = memory_report(auto, int8)
    print_report(reports, memory, args.dtype, seconds)
    print(
        f"harness check: teacher-forced {args.dtype} argmax = its greedy tokens: {self_agreement:.2%}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "quality": [asdict(r) for r in reports],
                    "memory": asdict(memory),
                    "reference_self_agreement": self_agreement,
                    "seconds": seconds,
                    "prompt_lens": [len(p) for p in prompts],
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
