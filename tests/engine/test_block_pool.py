"""Block pool and KV cache manager: exact block ids, ref counts and eviction order (no model)."""

from engine.block_pool import BlockPool
from engine.kv_cache_manager import KVCacheManager, hash_block
from engine.request import Request, Sequence
from engine.sampling_params import SamplingParams


def make_seq(token_ids, request_id=0):
    return Sequence.from_request(Request(request_id, tuple(token_ids), SamplingParams()))


def test_allocate_takes_blocks_from_the_front_of_the_free_queue():
    pool = BlockPool(4)
    blocks = pool.allocate(3)
    assert [b.block_id for b in blocks] == [0, 1, 2]
    assert [b.ref_count for b in blocks] == [1, 1, 1]
    assert pool.free_block_ids() == [3]


def test_freed_blocks_join_the_back_in_the_given_order():
    pool = BlockPool(4)
    blocks = pool.allocate(3)
    pool.free(reversed(blocks))
    assert pool.free_block_ids() == [3, 2, 1, 0]


def test_allocating_a_free_cached_block_evicts_its_hash():
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    h = hash_block(None, (1, 2))
    pool.cache(block, h, None, (1, 2))
    pool.free([block])
    assert pool.lookup(h, None, (1, 2)) is block  # free but still cached
    pool.allocate(2)  # takes block 1, then evicts block 0
    assert pool.lookup(h, None, (1, 2)) is None
    assert block.block_hash is None


def test_lookup_verifies_token_ids_and_parent():
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    h = hash_block(None, (1, 2))
    pool.cache(block, h, None, (1, 2))
    assert pool.lookup(h, None, (1, 3)) is None
    assert pool.lookup(h, b"other-parent", (1, 2)) is None


def test_sequence_allocation_fills_blocks_in_order_and_frees_tail_first():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    seq = make_seq(range(10))
    assert kv.allocate_slots(seq, 10)
    assert seq.block_ids == [0, 1, 2]
    seq.num_computed_tokens = 10
    assert kv.allocate_slots(seq, 2)  # tokens 10, 11 still fit block 2
    assert seq.block_ids == [0, 1, 2]
    assert kv.allocate_slots(seq, 3)  # tokens 12..14 need block 3
    assert seq.block_ids == [0, 1, 2, 3]
    kv.free(seq)
    assert seq.block_ids == []
    assert kv.pool.free_block_ids() == [4, 5, 6, 7, 3, 2, 1, 0]


def test_allocation_fails_without_side_effects_when_the_pool_is_short():
    kv = KVCacheManager(num_blocks=2, block_size=4, enable_prefix_caching=True)
    seq = make_seq(range(9))
    assert not kv.allocate_slots(seq, 9)
    assert seq.block_ids == []
    assert kv.pool.num_free_blocks == 2


def test_allocate_reuses_cached_prefix_blocks_and_counts_references():
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    prefix = list(range(100, 112))  # 3 full blocks
    first = make_seq(prefix + [1, 2])
    assert kv.allocate_slots(first, first.num_tokens)
    assert first.block_ids == [0, 1, 2, 3]
    second = make_seq(prefix + [7, 8, 9], request_id=1)
    hits = kv.find_cached_prefix(second)
    assert [b.block_id for b in hits] == [0, 1, 2]
    assert kv.allocate_slots(second, 3, hits)
    assert second.block_ids == [0, 1, 2, 4]
    assert [kv.pool.blocks[i].ref_count for i in range(5)] == [2, 2, 2, 1, 1]
    kv.free(first)
    assert [kv.pool.blocks[i].ref_count for i in range(5)] == [1, 1, 1, 0, 1]
    assert kv.pool.free_block_ids() == [5, 6, 7, 8, 9, 3]


def test_cached_prefix_never_covers_the_last_token():
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    tokens = list(range(8))  # exactly 2 full blocks
    first = make_seq(tokens)
    assert kv.allocate_slots(first, 8)
    second = make_seq(tokens, request_id=1)
    assert [b.block_id for b in kv.find_cached_prefix(second)] == [0]


def test_free_cached_blocks_are_evicted_least_recently_freed_first():
    kv = KVCacheManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    a, b = make_seq([1, 2, 3]), make_seq([5, 6, 7], request_id=1)
    assert kv.allocate_slots(a, 3) and kv.allocate_slots(b, 3)
    assert (a.block_ids, b.block_ids) == ([0, 1], [2, 3])
    kv.free(a)  # free queue: 1, 0 (block 0 cached: tokens 1, 2)
    kv.free(b)  # free queue: 1, 0, 3, 2 (block 2 cached: tokens 5, 6)
    c = make_seq([9, 9, 9, 9, 9], request_id=2)
    assert kv.allocate_slots(c, 5)
    assert c.block_ids == [1, 0, 3]
    assert kv.find_cached_prefix(make_seq([1, 2, 3], request_id=3)) == []
    assert [x.block_id for x in kv.find_cached_prefix(make_seq([5, 6, 7], request_id=4))] == [2]


def test_prefix_caching_off_never_hits():
    kv = KVCacheManager(num_blocks=6, block_size=2, enable_prefix_caching=False)
    a = make_seq([1, 2, 3, 4, 5])
    assert kv.allocate_slots(a, 5)
    assert kv.find_cached_prefix(make_seq([1, 2, 3, 4, 5], request_id=1)) == []


def test_the_pool_counts_blocks_held_by_several_sequences():
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    prefix = list(range(100, 112))  # 3 full blocks
    first = make_seq(prefix + [1, 2])
    assert kv.allocate_slots(first, first.num_tokens)
    assert kv.pool.num_shared_blocks == 0
    second = make_seq(prefix + [7], request_id=1)
    assert kv.allocate_slots(second, 1, kv.find_cached_prefix(second))
    assert kv.pool.num_shared_blocks == 3
    third = make_seq(prefix[:8] + [5], request_id=2)
    assert kv.allocate_slots(third, 1, kv.find_cached_prefix(third))
    assert kv.pool.num_shared_blocks == 3  # blocks 0 and 1 go from 2 to 3 references
    kv.free(first)
    assert kv.pool.num_shared_blocks == 2  # block 2 is second's alone now
    kv.free(third)
    assert kv.pool.num_shared_blocks == 0
