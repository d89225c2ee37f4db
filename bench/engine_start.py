"""Engine start time: from a local safetensors folder to the first generated token (weights
loaded, KV cache profiled and allocated, CUDA graphs captured), in a fresh process.

    python -m bench.engine_start --shape llama-3.1-8b --folder /tmp/llama8b

Writes a random-weight model of the shape (with a small word-level tokenizer) to the folder
first if it holds none.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def write_model(shape: str, folder: Path, max_model_len: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from bench.shapes import hf_config
    from tests.engine.tiny_models import write_tokenizer

    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            hf_config(shape, max_model_len), dtype=torch.bfloat16
        )
    model.save_pretrained(folder, max_shard_size="5GB")
    write_tokenizer(folder)
    del model
    torch.cuda.empty_cache()


def time_start(folder: Path) -> dict:
    started = time.perf_counter()
    from engine import LLM, SamplingParams

    imported = time.perf_counter()
    llm = LLM(str(folder))
    loaded = time.perf_counter()
    llm.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=1, temperature=0), use_tqdm=False)
    first = time.perf_counter()
    return {
        "import_s": imported - started,
        "load_to_ready_s": loaded - imported,
        "first_token_s": first - loaded,
        "total_s": first - started,
        "kv_blocks": llm.engine.kv_cache.num_blocks,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--max-model-len", type=int, default=4608)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(time_start(args.folder)))
        return
    if not (args.folder / "config.json").exists():
        t = time.perf_counter()
        write_model(args.shape, args.folder, args.max_model_len)
        print(f"wrote {args.shape} to {args.folder} in {time.perf_counter() - t:.1f} s", flush=True)
    for attempt in range(2):  # the first start also fills the page cache and Triton's cache
        out = subprocess.run(
            [sys.executable, "-m", "bench.engine_start", "--folder", str(args.folder), "--child"],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"start {attempt + 1}: {out.stdout.strip().splitlines()[-1]}", flush=True)


if __name__ == "__main__":
    main()
