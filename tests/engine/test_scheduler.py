"""Scheduler policy with a scripted fake model: token budgets, chunking, preemption order."""

from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import FinishReason, Request, Sequence, SequenceStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler


def make_seq(num_prompt, request_id, max_tokens=4, first_token=100):
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    prompt = tuple(range(first_token, first_token + num_prompt))
    return Sequence.from_request(Request(request_id, prompt, params))


def run_step(sched, token=7):
    """Schedule, then feed every sampling chunk the same token (a scripted model)."""
    out = sched.schedule()
    sampled = [[token] for c in out.chunks if c.sample]
    finished = sched.update(out, sampled)
    return out, finished


def test_decodes_are_scheduled_before_prefill_chunks():
    kv = KVCacheManager(64, 4, True)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=6, max_num_seqs=8), kv)
    a = make_seq(3, "a")
    sched.add(a)
    run_step(sched)  # a: prefill 3 tokens, samples its first token
    b = make_seq(20, "b", first_token=500)
    sched.add(b)
    out, _ = run_step(sched)
    assert [(c.seq.request.request_id, c.start, c.num_tokens) for c in out.chunks] == [
        ("a", 3, 1),
        ("b", 0, 5),
    ]
    out, _ = run_step(sched)
    assert [(c.seq.request.request_id, c.start, c.num_tokens) for c in out.chunks] == [
        ("a", 4, 1),
        ("b", 5, 5),
    ]
    assert not out.chunks[1].sample


def test_max_num_seqs_caps_running_sequences():
    kv = KVCacheManager(64, 4, True)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=100, max_num_seqs=2), kv)
    for i in range(3):
        sched.add(make_seq(2, i, first_token=10 * i + 100))
    out, _ = run_step(sched)
    assert [c.seq.request.request_id for c in out.chunks] == [0, 1]
    assert len(sched.waiting) == 1


def test_newest_sequence_is_preempted_when_blocks_run_out_and_recomputed_later():
    kv = KVCacheManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=100, max_num_seqs=8), kv)
    old, new = make_seq(3, "old", max_tokens=4), make_seq(3, "new", max_tokens=4, first_token=300)
    sched.add(old)
    sched.add(new)
    run_step(sched)  # both prefill 3 tokens into 2 blocks each: the pool is empty
    assert kv.pool.num_free_blocks == 0
    out, _ = run_step(sched)  # both decode their 4th token into their second block
    assert not out.preempted
    out, _ = run_step(sched)  # old's 5th token needs a third block: new is preempted
    assert out.preempted == [new]
    assert new.status is SequenceStatus.WAITING and new.block_ids == []
    assert new.num_computed_tokens == 0 and new.num_preemptions == 1
    assert [c.seq for c in out.chunks] == [old]
    finished = []
    while sched.num_unfinished:
        finished += run_step(sched)[1]
    assert {s.request.request_id for s in finished} == {"old", "new"}
    assert all(
        s.num_output_tokens == 4 and s.finish_reason is FinishReason.LENGTH for s in finished
    )


def test_second_request_sharing_a_three_block_prefix_computes_only_the_rest():
    kv = KVCacheManager(num_blocks=32, block_size=4, enable_prefix_caching=True)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=100, max_num_seqs=8), kv)
    first = make_seq(14, "first")  # 3 full blocks + 2 tokens
    sched.add(first)
    run_step(sched)
    second = Sequence.from_request(
        Request("second", first.request.prompt_token_ids[:12] + (1, 2, 3), SamplingParams())
    )
    sched.add(second)
    out, _ = run_step(sched)
    chunk = next(c for c in out.chunks if c.seq is second)
    assert (chunk.start, chunk.num_tokens) == (12, 3)
    assert second.num_cached_tokens == 12 and out.num_cached_tokens == 12
    assert second.block_ids[:3] == first.block_ids[:3]


def test_stop_token_ids_and_eos_finish_a_sequence():
    kv = KVCacheManager(16, 4, True)
    sched = Scheduler(SchedulerConfig(), kv, eos_token_ids=frozenset({2}))
    seq = make_seq(3, "s", max_tokens=10)
    sched.add(seq)
    _, finished = run_step(sched, token=2)
    assert finished == [seq] and seq.finish_reason is FinishReason.STOP
    assert kv.pool.num_used_blocks == 0
