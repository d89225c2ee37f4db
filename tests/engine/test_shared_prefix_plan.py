"""The host planner of shared-prefix attention: which sequences share which prefix."""

import numpy as np
import pytest

from engine.shared_prefix import max_plan_tiles, plan_shared_prefix
from tests.block_tables import contexts_ending_in_last_block, random_prefix_tree
from tests.block_tables import padded as table

BLOCK = 4


def test_groups_are_the_sequences_sharing_their_deepest_shared_block() -> None:
    rows = [
        [10, 11, 12, 20],  # A: shares 10, 11, 12 with B
        [10, 11, 12, 21],  # B
        [10, 30, 31],  # C: shares only block 10 with A and B
        [40, 41, 42],  # D: shares nothing
        [50, 51, 52, 53],  # E and F share 3 blocks
        [50, 51, 52, 54],
    ]
    contexts = np.array([16, 15, 12, 12, 14, 13])
    plan = plan_shared_prefix(table(rows), contexts, BLOCK, seqs_per_tile=4, max_groups=8)
    assert plan is not None
    assert plan.prefix_lens.tolist() == [12, 12, 0, 0, 12, 12]
    assert plan.num_tiles == 2
    tiles = [
        (
            int(plan.tile_leader[t]),
            int(plan.tile_prefix_len[t]),
            plan.seq_order[plan.tile_first[t] : plan.tile_first[t] + plan.tile_count[t]].tolist(),
        )
        for t in range(plan.num_tiles)
    ]
    assert sorted(tiles) == [(0, 12, [0, 1]), (4, 12, [4, 5])]
    assert (plan.tile_leader[plan.num_tiles :] == -1).all()
    assert sorted(plan.seq_order.tolist()) == list(range(6))  # every sequence exactly once
    assert plan.saved_tokens == 24


def test_prefix_stops_before_the_block_of_each_members_last_token() -> None:
    # Both hold blocks 1, 2, 3 but one has only 9 tokens: its last token sits in block 3
    # (positions 8..11), so the group shares blocks 1 and 2 only. Block 0 is a real block
    # id too: the zero padding of the shorter row must not count as sharing it.
    rows = [[1, 2, 3, 0], [1, 2, 3]]
    plan = plan_shared_prefix(table(rows), np.array([16, 9]), BLOCK, 4, 8, min_saved_fraction=0)
    assert plan is not None
    assert plan.prefix_lens.tolist() == [8, 8]


def test_large_groups_are_split_into_tiles_and_groups_capped_by_savings() -> None:
    shared_a = [100 + i for i in range(8)]
    rows = [shared_a + [200 + i] for i in range(10)]  # 10 members, 8 shared blocks
    rows += [[300, 301, 400 + i] for i in range(2)]  # 2 members, 2 shared blocks
    contexts = np.array([36] * 10 + [12] * 2)
    plan = plan_shared_prefix(table(rows), contexts, BLOCK, seqs_per_tile=4, max_groups=1)
    assert plan is not None
    assert plan.num_tiles == 3  # 4 + 4 + 2 members
    assert plan.tile_count[:3].tolist() == [4, 4, 2]
    assert plan.prefix_lens.tolist() == [32] * 10 + [0, 0]  # the smaller group is left out
    assert plan.num_tiles <= max_plan_tiles(12, 4, 1)


def test_no_plan_when_sharing_saves_little() -> None:
    rows = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 9, 10, 11, 12, 13, 14, 15]]
    contexts = np.array([32, 32])
    assert plan_shared_prefix(table(rows), contexts, BLOCK, 4, 8) is None  # 4 of 64 tokens
    assert plan_shared_prefix(table([[1, 2], [3, 4]]), np.array([8, 8]), BLOCK, 4, 8) is None
    assert plan_shared_prefix(table([[1, 2]]), np.array([8]), BLOCK, 4, 8) is None


@pytest.mark.parametrize("seed", range(20))
def test_random_prefix_trees_give_plans_whose_tiles_really_share_their_prefix(seed) -> None:
    """Block tables grown like the prefix cache grows them (a new sequence reuses a prefix of
    an earlier one's blocks, then gets fresh blocks); every plan must hold its contract."""
    rng = np.random.default_rng(seed)
    rows, _ = random_prefix_tree(rng, num_seqs=(2, 40), own_blocks=(1, 6))
    contexts = contexts_ending_in_last_block(rng, rows, BLOCK)
    spt = int(rng.choice([1, 2, 4, 16]))
    plan = plan_shared_prefix(table(rows), contexts, BLOCK, spt, 8, min_saved_fraction=0.0)
    if plan is None:
        return
    assert sorted(plan.seq_order.tolist()) == list(range(len(rows)))
    covered = set()
    for t in range(plan.num_tiles):
        leader = int(plan.tile_leader[t])
        prefix = int(plan.tile_prefix_len[t])
        first, count = int(plan.tile_first[t]), int(plan.tile_count[t])
        assert 1 <= count <= spt and prefix > 0 and prefix % BLOCK == 0
        for s in plan.seq_order[first : first + count].tolist():
            assert rows[s][: prefix // BLOCK] == rows[leader][: prefix // BLOCK]
            assert prefix <= contexts[s] - 1  # the last token is read by the plain pass
            assert plan.prefix_lens[s] == prefix
            covered.add(s)
    assert all(plan.prefix_lens[s] == 0 for s in range(len(rows)) if s not in covered)
    assert (plan.tile_leader[plan.num_tiles :] == -1).all()
