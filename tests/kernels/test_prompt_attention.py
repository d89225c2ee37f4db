"""Whole prompts attended over their fresh keys and values (kernels/prompt_attention.py), alone
and as the tail of a paged-attention step, against the torch references."""

import pytest
import torch

from kernels.kv_store import quantize_int8_ref, store_kv_ref
from kernels.paged_attention import paged_attention, paged_attention_ref
from kernels.prompt_attention import PromptRows, prompt_attention, prompt_attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1.5e-2}


def make_step(seqs, num_kv_heads, group, head_dim, block_size, dtype, device, int8=False):
    """A step over (context_len, query_len) sequences whose last query_len keys/values are this
    step's fresh rows, written into a shuffled paged cache like the engine does. Returns the
    paged-attention arguments, the fresh key/value rows and the PromptRows of the trailing
    sequences whose query is their whole context."""
    gen = torch.Generator().manual_seed(0)
    blocks_per_seq = [-(-c // block_size) for c, _ in seqs]
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(seqs), max(blocks_per_seq), dtype=torch.int32)
    used = 0
    for s, n in enumerate(blocks_per_seq):
        tables[s, :n] = order[used : used + n]
        used += n
    num_tokens = sum(q for _, q in seqs)
    heads = num_kv_heads * group
    query = torch.randn(num_tokens, heads, head_dim, generator=gen)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    scales: tuple = ()
    if int8:
        (k_cache, k_scale), (v_cache, v_scale) = (
            quantize_int8_ref(k_cache),
            quantize_int8_ref(v_cache),
        )
        scales = (k_scale, v_scale)
    slots, cu, first_prompt = [], [0], len(seqs)
    for s, (context_len, query_len) in enumerate(seqs):
        for p in range(context_len - query_len, context_len):
            slots.append(int(tables[s, p // block_size]) * block_size + p % block_size)
        cu.append(cu[-1] + query_len)
    for s in range(len(seqs) - 1, -1, -1):
        if seqs[s][0] != seqs[s][1] or seqs[s][1] == 1:
            break
        first_prompt = s
    store_kv_ref(key, value, k_cache, v_cache, torch.tensor(slots), *scales)

    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    prompts = PromptRows(
        first_row=cu[first_prompt],
        num_rows=cu[-1] - cu[first_prompt],
        cu_query_lens=torch.tensor(
            [c - cu[first_prompt] for c in cu[first_prompt:]], dtype=torch.int32, device=device
        ),
        max_query_len=max(q for _, q in seqs[first_prompt:]),
    )
    caches = (k_cache, v_cache) if int8 else (cast(k_cache), cast(v_cache))
    args = (
        cast(query),
        caches[0].to(device),
        caches[1].to(device),
        tables.to(device),
        torch.tensor(cu, dtype=torch.int32, device=device),
        torch.tensor([c for c, _ in seqs], dtype=torch.int32, device=device),
        head_dim**-0.5,
        *(t.to(device) for t in scales),
    )
    return args, cast(key), cast(value), prompts


# Decodes, a chunk after a cached prefix, then whole prompts (the engine's order).
SEQS = [(9, 1), (5, 1), (20, 6), (7, 7), (13, 13), (2, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_step_with_whole_prompts_matches_the_paged_reference(dtype: torch.dtype) -> None:
    args, key, value, prompts = make_step(SEQS, 2, 4, 16, 4, dtype, DEVICE)
    assert (prompts.first_row, prompts.num_prompts) == (8, 3)
    out = paged_attention(*args, num_decode_seqs=2, prompts=prompts, key=key, value=value)
    expected = paged_attention_ref(*args)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


def test_whole_prompts_over_an_int8_cache_attend_to_their_unquantized_keys() -> None:
    args, key, value, prompts = make_step(SEQS, 2, 2, 16, 4, torch.float32, DEVICE, int8=True)
    out = paged_attention(*args, num_decode_seqs=2, prompts=prompts, key=key, value=value)
    expected = paged_attention_ref(*args, prompts=prompts, key=key, value=value)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    rows = slice(prompts.first_row, None)
    exact = prompt_attention_ref(args[0][rows], key[rows], value[rows], prompts, args[6])
    torch.testing.assert_close(out[rows], exact, atol=1e-5, rtol=1e-5)
    # The leading rows still read the codes: they differ from an unquantized cache.
    over_codes = paged_attention_ref(*args)
    torch.testing.assert_close(out[:8], over_codes[:8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[rows], over_codes[rows], atol=1e-4)


@pytest.mark.gpu
def test_whole_prompts_run_flash_attention_at_real_sizes_in_bf16() -> None:
    gen = torch.Generator().manual_seed(1)
    decodes = [(int(c), 1) for c in torch.randint(2, 2049, (40,), generator=gen)]
    seqs = [*decodes, (700, 300), (17, 17), (512, 512), (4096, 4096), (3001, 3001)]
    args, key, value, prompts = make_step(seqs, 8, 4, 128, 16, torch.bfloat16, "cuda")
    assert prompts.num_prompts == 4 and prompts.max_query_len == 4096
    out = paged_attention(*args, num_decode_seqs=40, prompts=prompts, key=key, value=value)
    expected = paged_attention_ref(*args)
    torch.testing.assert_close(out, expected, atol=1.5e-2, rtol=1.5e-2)
    rows = slice(prompts.first_row, None)
    flash = prompt_attention(args[0][rows], key[rows], value[rows], prompts, args[6])
    torch.testing.assert_close(flash, out[rows], atol=0, rtol=0)
