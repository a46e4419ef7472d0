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
