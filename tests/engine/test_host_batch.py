"""A host batch's token rows go to the device as one array (engine/model_runner.py)."""

import numpy as np

from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.model_runner import build_host_batch
from engine.request import Request, Sequence
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler


def test_token_columns_hold_the_lists_in_rows_padded_to_16() -> None:
    kv = KVCacheManager(64, 4, True)
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=23, max_num_seqs=4), kv)
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    for i, length in enumerate((9, 7, 12)):
        prompt = tuple(range(100 * i, 100 * i + length))
        scheduler.add(Sequence.from_request(Request(i, prompt, params)))
    host = build_host_batch(scheduler.schedule(), 4)  # 23 tokens: two prompts and a chunk

    columns = host.token_columns()

    n = len(host.input_ids)
    assert n == 23 and columns.shape == (3, 32) and columns.dtype == np.int64
    assert columns[0, :n].tolist() == host.input_ids
    assert columns[1, :n].tolist() == host.positions
    assert columns[2, :n].tolist() == host.slot_mapping
    assert not columns[:, n:].any()


def test_slots_of_chunks_that_start_and_end_inside_blocks() -> None:
    kv = KVCacheManager(64, 4, True)
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=7, max_num_seqs=4), kv)
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    scheduler.add(Sequence.from_request(Request(0, tuple(range(10, 27)), params)))  # 17 tokens
    spans = []
    for _ in range(3):  # chunks [0, 7), [7, 14), [14, 17)
        out = scheduler.schedule()
        host = build_host_batch(out, 4)
        (chunk,) = out.chunks
        ids = chunk.seq.block_ids
        positions = range(chunk.start, chunk.start + chunk.num_tokens)
        assert host.slot_mapping == [ids[p // 4] * 4 + p % 4 for p in positions]
        spans.append((chunk.start, chunk.num_tokens))
        scheduler.update(out, [[1]] if chunk.sample else [])
    assert spans == [(0, 7), (7, 7), (14, 3)]
