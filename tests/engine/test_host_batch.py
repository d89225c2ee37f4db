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
