"""The KV block pool: tables grow and shrink by length, the budget is never exceeded."""

from __future__ import annotations

import random

import pytest
from edgespec.verify_daemon.block_manager import BlockManager


def test_grow_truncate_release_move_blocks_between_pool_and_table():
    bm = BlockManager(num_blocks=9, block_size=4)  # 8 usable blocks
    table: list[int] = []
    bm.grow(table, 10)
    assert len(table) == 3 and bm.used == 3 and 0 not in table
    bm.truncate(table, 5)  # positions 0..4 need two blocks
    assert len(table) == 2 and bm.used == 2
    bm.release(table)
    assert table == [] and bm.used == 0 and bm.peak_used == 3


def test_slots_follow_the_block_table():
    bm = BlockManager(num_blocks=9, block_size=4)
    table = [5, 2]
    assert bm.slots(table, 2, 7).tolist() == [22, 23, 8, 9, 10]


def test_growing_past_the_pool_is_refused_and_changes_nothing():
    bm = BlockManager(num_blocks=5, block_size=4)
    table: list[int] = []
    assert not bm.can_grow(table, 17)
    with pytest.raises(MemoryError):
        bm.grow(table, 17)
    assert table == [] and bm.free == 4


def test_random_tables_never_share_a_block_or_exceed_the_budget():
    rng = random.Random(7)
    bm = BlockManager(num_blocks=33, block_size=4)
    tables: list[list[int]] = [[] for _ in range(6)]
    lengths = [0] * 6
    for _ in range(2000):
        i = rng.randrange(6)
        target = rng.randrange(0, 60)
        if target < lengths[i]:
            bm.truncate(tables[i], target)
            lengths[i] = target
        elif bm.can_grow(tables[i], target):
            bm.grow(tables[i], target)
            lengths[i] = target
        owned = [b for t in tables for b in t]
        assert len(owned) == len(set(owned)) == bm.used <= bm.capacity
        assert 0 not in owned
    assert bm.peak_used <= bm.capacity


def _published(bm: BlockManager, ids: list[int]) -> list[int]:
    """A table holding ``ids`` (all cached) with its full blocks published."""
    table: list[int] = []
    bm.grow(table, len(ids))
    assert bm.publish(table, ids, len(ids), 0) == len(ids) // bm.block_size
    return table


def test_a_published_prefix_is_shared_exactly_and_reference_counted():
    bm = BlockManager(num_blocks=9, block_size=4)
    first = _published(bm, list(range(10)))  # blocks [0..3] and [4..7] publish, [8, 9] not
    shared = bm.match_prefix([*range(8), 50, 51, 52], limit=10)
    assert shared == first[:2] and bm.used == 3 and bm.prefix_hit_tokens == 8
    assert bm.match_prefix([0, 1, 2, 3, 9, 9, 9, 9, 9], limit=8) == first[:1]  # diverges
    assert bm.match_prefix([1, 0, 2, 3, 4], limit=4) == []  # same ids, other order
    assert bm.match_prefix(list(range(8)), limit=7) == first[:1]  # only full blocks below limit
    assert bm.exclusive(first) == 1  # releasing it frees only the unpublished tail
    bm.release(first)
    assert bm.used == 2


def test_freed_blocks_stay_matchable_until_the_pool_reuses_them():
    bm = BlockManager(num_blocks=4, block_size=4)  # 3 usable blocks
    table = _published(bm, list(range(8)))
    blocks = list(table)
    bm.release(table)
    assert bm.used == 0
    again = bm.match_prefix(list(range(9)), limit=8)
    assert again == blocks and bm.used == 2  # revived from the free list
    bm.release(again)
    other: list[int] = []
    bm.grow(other, 12)  # takes every block: their old content is gone
    assert bm.match_prefix(list(range(9)), limit=8) == []


def test_truncating_into_a_shared_block_drops_it_and_into_an_own_one_unpublishes_it():
    bm = BlockManager(num_blocks=9, block_size=4)
    owner = _published(bm, list(range(8)))
    reader = bm.match_prefix(list(range(9)), limit=8)
    assert bm.truncate(reader, 6) == 4  # block 2 is shared: rewriting 6.. would corrupt it
    assert reader == owner[:1]
    assert bm.truncate(owner, 6) == 6  # now only ours: kept, but no longer published
    assert bm.match_prefix(list(range(9)), limit=8) == owner[:1]


def test_publishing_the_same_content_twice_keeps_the_first():
    bm = BlockManager(num_blocks=9, block_size=4)
    first = _published(bm, list(range(4)))
    second: list[int] = []
    bm.grow(second, 4)
    assert bm.publish(second, list(range(4)), 4, 0) == 0
    assert bm.match_prefix(list(range(5)), limit=4) == first
