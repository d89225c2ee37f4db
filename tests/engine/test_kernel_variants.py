"""Triton compiles one variant of a kernel per specialisation of its arguments (integers: equal to
1, multiple of 16, other; pointers: 16-byte aligned or not; constexprs by value). A variant first
needed mid-run costs a compile inside a step (on an H100, W8's mixed steps had a p90 of 750-1,050
ms against a 375 ms median). This records, on the CPU interpreter, the variants a two-wave run
launches and checks that the second wave, whose mixed steps carry other numbers of decodes and
prompt tokens, needs none the first steps did not."""

import dataclasses

import pytest
import torch

from bench.shapes import engine_config
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.factory import create_engine, random_model
from engine.output_processor import OutputProcessor
from engine.request import Request
from engine.sampling_params import SamplingParams


def _specialisation(value) -> tuple:
    if isinstance(value, torch.Tensor):
        return ("pointer", value.data_ptr() % 16 == 0, value.dtype)
    if isinstance(value, bool):
        return ("constexpr", value)
    if isinstance(value, int):
        return ("int", value == 1, value % 16 == 0)
    if isinstance(value, float):
        return ("float",)
    return ("constexpr", repr(value))


@pytest.fixture
def launched_variants(monkeypatch):
    """{variant: first step seen}, filled by Triton launches, which are recorded and not run;
    step[0] is the current step's number."""
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    if not hasattr(interpreter, "InterpretedFunction"):
        pytest.skip("needs Triton's interpreter (CPU)")
    seen: dict = {}
    step = [0]

    def record(self, *args, grid, warmup, **kwargs):
        unspecialised = set(self.kwargs.get("do_not_specialize") or ())
        key = (
            self.fn.__name__,
            tuple(
                ("any",) if name in unspecialised else _specialisation(arg)
                for name, arg in zip(self.arg_names, args, strict=False)
            ),
            tuple(sorted((name, _specialisation(v)) for name, v in kwargs.items())),
        )
        seen.setdefault(key, step[0])

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", record)
    monkeypatch.setenv("BATCHGEN_KERNELS", "triton")
    return seen, step


def test_a_second_wave_of_mixed_steps_needs_no_new_kernel_variant(launched_variants) -> None:
    seen, step = launched_variants
    num_seqs, prompt_len, max_tokens = 64, 64, 24
    model_config = dataclasses.replace(
        engine_config("llama-3.2-1b", prompt_len + max_tokens + 16),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=512,
    )
    config = EngineConfig(
        model=model_config,
        cache=CacheConfig(num_blocks=8 * num_seqs),
        scheduler=SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=num_seqs),
        dtype=torch.float32,
        device="cpu",
        overlap_scheduling=True,
    )
    model = random_model(model_config, torch.float32, torch.device("cpu"))
    engine = create_engine(config, model, OutputProcessor(None), frozenset())
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    for i in range(2 * num_seqs):  # two waves: the second admitted as the first finishes
        prompt = tuple(range(10 + i % 5, 10 + i % 5 + prompt_len))
        engine.add_request(Request(i, prompt, params))
    while engine.scheduler.waiting or engine.scheduler.running:
        engine.step()
        step[0] += 1
    engine.drain()
    assert step[0] > 40  # the second wave starts around step 24
    late = sorted((first, key[0]) for key, first in seen.items() if first > 8)
    assert late == [], f"variants first launched mid-run (step, kernel): {late}"
