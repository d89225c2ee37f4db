"""The block-id rows KVCacheManager keeps (engine/block_tables.py) against the padded table
built from the sequences' lists, through allocation, prefix-cache hits, trims, frees and
row / width growth."""

import random

import numpy as np

from engine.kv_cache_manager import KVCacheManager
from engine.model_runner import padded_block_table_np
from engine.request import Request, Sequence
from engine.sampling_params import SamplingParams


def make_seq(token_ids, request_id=0):
    return Sequence.from_request(Request(request_id, tuple(token_ids), SamplingParams()))


def assert_rows_match(kv: KVCacheManager, seqs: list[Sequence]) -> None:
    held = [s for s in seqs if s.block_ids]
    if not held:
        return
    width = max(len(s.block_ids) for s in held)
    rows = kv.tables.gather(held, width)
    assert rows is not None
    np.testing.assert_array_equal(rows, padded_block_table_np([s.block_ids for s in held], width))


def test_rows_follow_allocation_trim_and_free_through_random_steps() -> None:
    rng = random.Random(0)
    block = 2
    kv = KVCacheManager(num_blocks=2000, block_size=block, enable_prefix_caching=True)
    # Shared prompt starts so that prefix-cache hits hand out cached blocks too.
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9]]
    seqs: list[Sequence] = []
    for step in range(400):
        action = rng.random()
        if action < 0.4 or not seqs:  # admit (more sequences than the initial 64 rows)
            prompt = rng.choice(prompts) + [rng.randrange(100) for _ in range(rng.randint(1, 9))]
            seq = make_seq(prompt, request_id=step)
            cached = kv.find_cached_prefix(seq)
            if kv.allocate_slots(seq, seq.num_tokens - len(cached) * block, cached):
                seq.num_computed_tokens = seq.num_tokens
                seqs.append(seq)
        elif action < 0.8:  # decode a few tokens (rows grow past the initial 16 columns)
            seq = rng.choice(seqs)
            new = rng.randint(1, 12)
            if kv.allocate_slots(seq, new):
                seq.token_ids.extend(rng.randrange(100) for _ in range(new))
                seq.num_computed_tokens = seq.num_tokens
        elif action < 0.9:  # roll back some tokens (rejected drafts)
            seq = rng.choice(seqs)
            keep = rng.randint(1, seq.num_tokens)
            del seq.token_ids[keep:]
            seq.num_computed_tokens = keep
            kv.trim(seq, keep)
        else:  # finish or preempt
            seq = seqs.pop(rng.randrange(len(seqs)))
            kv.free(seq)
            assert seq.block_table_row == -1
        assert_rows_match(kv, seqs)
    assert kv.tables.array.shape[0] > 64 and kv.tables.array.shape[1] > 16


def test_a_sequence_whose_blocks_were_not_handed_out_by_the_manager_has_no_row() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    managed, outside = make_seq(range(6)), make_seq(range(3), request_id=1)
    assert kv.allocate_slots(managed, 6)
    outside.block_ids = [5]
    assert kv.tables.gather([managed, outside], 2) is None
    np.testing.assert_array_equal(kv.tables.gather([managed], 2), [[0, 1]])
