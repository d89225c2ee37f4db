"""Compile the paged-attention kernel for an NVIDIA architecture on any machine (no GPU, no
driver: Triton's compiler and its bundled ptxas) and count the PTX instructions that say how
its tiles reach the tensor cores: 16-byte async copies, ldmatrix, narrow shared loads, byte
permutes. The cheap check before spending GPU time on a layout or operand change (it is how
the slot-major INT8 value layout was chosen, bench/RESULTS.md).

Arguments are specialised as the JIT would specialise a launch at the 8B shape (32 query / 8
KV heads, head_dim 128, 16-slot blocks): pointers 16-byte aligned, integers equal to 1 made
constants, multiples of 16 marked so; tile configs are the engine's defaults.

    python -m bench.kernel_ptx [--arch 90] [--json]

Run it without TRITON_INTERPRET (the interpreter replaces the kernels with Python functions
that cannot be compiled).
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.kv_store import allocate_kv_cache, allocate_kv_scales, is_slot_major, to_slot_major
from kernels.paged_attention import _paged_attention_kernel, default_tile_config

# PTX mnemonics (prefixes) counted per compiled kernel.
COUNTED = (
    "mma.sync",
    "wgmma.mma_async",
    "cp.async.cg",  # 16-byte global -> shared copies
    "cp.async.ca",  # 4- and 8-byte ones
    "ldmatrix",
    "ld.shared",
    "st.shared",
    "prmt",
    "ld.global",
)


@dataclass(frozen=True)
class Variant:
    int8: bool
    slot_major_values: bool
    decode: bool  # decode tiles (16 rows) or prefill tiles
    has_prefix: bool = False
    fresh: bool = False  # chunks read their own keys from the step's key / value

    @property
    def name(self) -> str:
        cache = "int8" if self.int8 else "bf16"
        if self.int8:
            cache += " slot-major values" if self.slot_major_values else " row-major values"
        tiles = "decode" if self.decode else "prefill"
        return (
            f"{tiles} / {cache}"
            + (" / shared prefix" if self.has_prefix else "")
            + (" / fresh keys" if self.fresh else "")
        )


def compile_paged_attention(variant: Variant, arch: int = 90) -> str:
    """PTX of the paged-attention kernel for one variant at the 8B shape."""
    heads, kv_heads, head_dim, block_size, num_blocks, num_seqs = 32, 8, 128, 16, 64, 8
    group_pad = triton.next_power_of_2(heads // kv_heads)
    dtype = torch.int8 if variant.int8 else torch.bfloat16
    k_cache, v_cache = allocate_kv_cache(num_blocks, block_size, kv_heads, head_dim, dtype, "meta")
    if variant.int8 and not variant.slot_major_values:
        v_cache = torch.empty_like(k_cache)
    elif variant.int8 and not is_slot_major(v_cache):
        v_cache = to_slot_major(v_cache)
    scale, _ = allocate_kv_scales(num_blocks, block_size, kv_heads, "meta")
    num_tokens = num_seqs if variant.decode else 16 * num_seqs
    query = torch.empty((num_tokens, heads, head_dim), device="meta")
    tables = torch.empty((num_seqs, 48), dtype=torch.int32, device="meta")
    step_kv = torch.empty((num_tokens, kv_heads, head_dim), dtype=torch.bfloat16, device="meta")
    config = default_tile_config(num_tokens, num_seqs, group_pad, variant.int8, variant.fresh)
    tensors = {
        "query_ptr": ("*bf16", query),
        "k_cache_ptr": ("*i8" if variant.int8 else "*bf16", k_cache),
        "v_cache_ptr": ("*i8" if variant.int8 else "*bf16", v_cache),
        "k_scale_ptr": ("*fp32", scale),
        "v_scale_ptr": ("*fp32", scale),
        "block_tables_ptr": ("*i32", tables),
        "cu_query_lens_ptr": ("*i32", None),
        "context_lens_ptr": ("*i32", None),
        "out_ptr": ("*bf16", query),
        "prefix_lens_ptr": ("*i32", None),
        "prefix_out_ptr": ("*fp32", query),
        "prefix_lse_ptr": ("*fp32", query[:, :, 0]),
        "key_ptr": ("*bf16", step_kv),
        "value_ptr": ("*bf16", step_kv),
    }
    strides = {
        "stride_query": query,
        "stride_out": query,
        "stride_prefix_out": query,
        "stride_prefix_lse": query[:, :, 0],
        "stride_k_cache": k_cache,
        "stride_v_cache": v_cache,
        "stride_k_scale": scale,
        "stride_v_scale": scale,
        "stride_block_tables": tables,
        "stride_key": step_kv,
        "stride_value": step_kv,
    }
    dims = {"token": 0, "seq": 0, "head": 1}
    cache_dims = {"block": 0, "slot": 1, "head": 2, "dim": 3}
    constexprs = {
        "GROUP_SIZE": heads // kv_heads,
        "GROUP_PAD": group_pad,
        "BLOCK_Q": config.block_q,
        "BLOCK_N": config.block_n,
        "FRESH_BLOCK_N": config.fresh_block_n or config.block_n,
        "BLOCK_SIZE": block_size,
        "V_SLOT_MAJOR": is_slot_major(v_cache),
        "HEAD_DIM": head_dim,
        "IS_INT8": variant.int8,
        "DOT_DTYPE": tl.bfloat16,
        "DOT_PRECISION": "tf32",
        "HAS_PREFIX": variant.has_prefix,
        "FRESH_KV": variant.fresh,
    }
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list[list]] = {}
    for index, name in enumerate(_paged_attention_kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in tensors:
            signature[name] = tensors[name][0]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in ("num_seqs", "seq_offset"):  # do_not_specialize
            signature[name] = "i32"
        elif name == "qk_scale":
            signature[name] = "fp32"
        else:  # stride_<tensor>_<dim>
            prefix, dim_name = name.rsplit("_", 1)
            tensor = strides[prefix]
            dim = (cache_dims if "cache" in prefix or "scale" in prefix else dims)[dim_name]
            value = tensor.stride(dim)
            if value == 1:
                signature[name] = "constexpr"
                constexprs[name] = 1
                continue
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(
        _paged_attention_kernel, signature=signature, constexprs=constexprs, attrs=attrs
    )
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    return compiled.asm["ptx"]


def count_instructions(ptx: str) -> dict[str, int]:
    """Occurrences of each COUNTED mnemonic in the PTX text."""
    return {mnemonic: ptx.count(mnemonic) for mnemonic in COUNTED}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    ap.add_argument("--json", action="store_true", help="print {variant: counts} as JSON")
    args = ap.parse_args()
    variants = [Variant(False, False, decode) for decode in (True, False)]
    variants += [
        Variant(True, slot_major, decode)
        for decode, slot_major in itertools.product((True, False), (True, False))
    ]
    variants.append(Variant(True, True, decode=False, fresh=True))  # what the engine's chunks run
    if args.json:
        counts = {
            v.name: count_instructions(compile_paged_attention(v, args.arch)) for v in variants
        }
        print(json.dumps(counts))
        return
    print(f"paged attention, 8B shape, sm_{args.arch}: instructions in the PTX")
    print(f"{'variant':50s}" + "".join(f"{m:>16s}" for m in COUNTED))
    for variant in variants:
        counts = count_instructions(compile_paged_attention(variant, args.arch))
        print(f"{variant.name:50s}" + "".join(f"{counts[m]:16d}" for m in COUNTED))


if __name__ == "__main__":
    main()
