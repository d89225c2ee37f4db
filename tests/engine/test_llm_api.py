"""The offline API end to end on tiny random models and on SmolLM2: errors, seeds, stop
strings, logprobs, prefix-cache metrics, streaming."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, FinishReason, GenerationRequest, SamplingParams
from engine.errors import UnsupportedModelError
from tests.engine import tiny_models as tm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3")
    tm.make_tiny_model("llama3", path)
    return path


@pytest.fixture(scope="module")
def tiny_llm(tiny_dir):
    return LLM(str(tiny_dir), dtype="float32", block_size=4, num_blocks=256)


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return LLM(str(smollm2_dir), dtype="float32")


def test_bad_requests_get_errors_naming_the_field_and_the_rest_complete(tiny_llm):
    good = [5, 6, 7, 8]
    prompts = [
        good,
        "",
        [7] * 600,  # longer than the 512-token context
        good,
        good,
        [{"role": "user"}],
        GenerationRequest(prompt_token_ids=[5, 10_000]),
        GenerationRequest(),
    ]
    params = [
        SamplingParams(max_tokens=3, temperature=0),
        None,
        None,
        {"max_tokens": -1},
        {"top_p": 1.5},
        None,
        None,
        None,
    ]
    outs = tiny_llm.generate(prompts, params, use_tqdm=False)
    assert [o.index for o in outs] == list(range(8))
    assert outs[0].ok and len(outs[0].token_ids) == 3
    errors = [o.error or "" for o in outs[1:]]
    assert all(o.finish_reason is FinishReason.ERROR for o in outs[1:])
    assert errors[0].startswith("prompt: empty")
    assert errors[1].startswith("prompt:") and "context" in errors[1]
    assert "max_tokens" in errors[2]
    assert "top_p" in errors[3]
    assert errors[4] == "messages[0].content: missing"
    assert errors[5].startswith("prompt_token_ids:") and "10000" in errors[5]
    assert errors[6].startswith("prompt: missing")


def test_request_larger_than_the_whole_kv_cache_finishes_with_an_error(tiny_dir):
    llm = LLM(str(tiny_dir), dtype="float32", block_size=4, num_blocks=4)
    outs = llm.generate(
        [[5] * 10, [6] * 4], SamplingParams(max_tokens=8, temperature=0), use_tqdm=False
    )
    assert "KV cache" in (outs[0].error or "")
    assert outs[1].ok and len(outs[1].token_ids) == 8


def test_invalid_sampling_params_raise_naming_the_field():
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-0.5)
    with pytest.raises(ValueError, match="bogus"):
        SamplingParams.from_mapping({"bogus": 1})


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config

    GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=16, architectures=["GPT2LMHeadModel"]
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        LLM(str(tmp_path))


def test_seeded_request_gives_the_same_output_alone_and_in_a_batch(tiny_llm):
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=3)
    alone = tiny_llm.generate([[9, 10, 11]], seeded, use_tqdm=False)[0]
    others = tm.random_prompts(5, 2, 30, seed=4)
    crowd = tiny_llm.generate(
        others + [[9, 10, 11]],
        [SamplingParams(max_tokens=12, temperature=1.0)] * 5 + [seeded],
        use_tqdm=False,
    )[-1]
    assert crowd.token_ids == alone.token_ids
    other_seed = tiny_llm.generate(
        [[9, 10, 11]], SamplingParams(max_tokens=12, temperature=1.0, seed=4), use_tqdm=False
    )[0]
    assert other_seed.token_ids != alone.token_ids


def test_shared_three_block_prefix_is_computed_once(tiny_dir):
    llm = LLM(str(tiny_dir), dtype="float32", block_size=4, num_blocks=64)
    prefix = list(range(20, 32))  # 3 blocks of 4
    params = SamplingParams(max_tokens=2, temperature=0)
    llm.generate([prefix + [40, 41]], params, use_tqdm=False)
    before = llm.metrics.num_computed_tokens
    out = llm.generate([prefix + [50, 51, 52]], params, use_tqdm=False)[0]
    assert out.num_cached_tokens == 12
    assert llm.metrics.num_cached_prompt_tokens == 12
    # 3 uncached prompt tokens, then 1 decode step for the second generated token
    assert llm.metrics.num_computed_tokens - before == 3 + 1


def test_stream_yields_each_request_once_and_holds_a_bounded_number(tiny_llm):
    pulled = []

    def requests():
        for i in range(40):
            pulled.append(i)
            yield GenerationRequest(prompt_token_ids=[5 + i % 7, 6], request_id=f"r{i}")

    seen = []
    for completion in tiny_llm.stream(requests(), max_pending=8):
        assert len(pulled) - len(seen) <= 8 + 1
        seen.append(completion.request_id)
    assert sorted(seen) == sorted(f"r{i}" for i in range(40))


def test_stop_strings_cut_the_text_exactly(smol):
    prompt = "Write the numbers from one to twenty in words, separated by commas:"
    greedy = SamplingParams(max_tokens=40, temperature=0)
    full = smol.generate(prompt, greedy, use_tqdm=False)[0]
    stop = full.text[12:16]
    at = full.text.find(stop)
    cut = smol.generate(
        prompt, SamplingParams(max_tokens=40, temperature=0, stop=[stop]), use_tqdm=False
    )[0]
    assert cut.text == full.text[:at]
    assert cut.finish_reason is FinishReason.STOP
    kept = smol.generate(
        prompt,
        SamplingParams(max_tokens=40, temperature=0, stop=[stop], include_stop_str_in_output=True),
        use_tqdm=False,
    )[0]
    assert kept.text == full.text[: at + len(stop)]


def test_logprobs_equal_log_softmax_of_the_models_logits(smol, smollm2_dir):
    from transformers import AutoModelForCausalLM

    out = smol.generate(
        "The largest planet in the solar system is",
        SamplingParams(max_tokens=8, temperature=0.7, seed=1, logprobs=2),
        use_tqdm=False,
    )[0]
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = torch.tensor([list(out.prompt_token_ids) + list(out.token_ids)])
    with torch.no_grad():
        logprobs = hf(ids).logits[0].log_softmax(-1)
    n = len(out.prompt_token_ids)
    assert out.logprobs is not None and len(out.logprobs) == 8
    for i, (token, lp) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        assert lp.token_id == token
        assert lp.logprob == pytest.approx(float(logprobs[n - 1 + i, token]), abs=1e-4)
        assert list(lp.top) == logprobs[n - 1 + i].topk(2).indices.tolist()


def test_chat_messages_go_through_the_chat_template(smol):
    messages = [{"role": "user", "content": "Say hello."}]
    out = smol.generate([messages], SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)[0]
    expected = smol.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert smol.tokenizer.decode(list(out.prompt_token_ids)) == expected
    assert out.ok and out.text


def test_closing_a_stream_early_drops_its_unfinished_requests(tiny_llm):
    requests = (GenerationRequest(prompt_token_ids=[5 + i, 6, 7], request_id=i) for i in range(20))
    stream = tiny_llm.stream(requests, max_pending=8)
    next(stream)
    stream.close()
    assert tiny_llm.engine.num_unfinished == 0
    assert tiny_llm.engine.kv_cache.pool.num_used_blocks == 0
    outs = tiny_llm.generate(
        [[5, 6, 7]], SamplingParams(max_tokens=2, temperature=0), use_tqdm=False
    )
    assert outs[0].ok and outs[0].index == 0
