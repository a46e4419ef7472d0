"""Paged KV memory: fixed-size blocks from one pool, one block table per session.

The pool holds ``num_blocks`` blocks of ``block_size`` token slots each; block 0 is never
handed out (padding reads point at it), so a session's token at position p lives in slot
``table[p // block_size] * block_size + p % block_size``. Nothing here touches tensors: the
runner owns the memory, this class only decides who owns which block, so the budget can be
checked (and tested) without a model.

**Shared prefixes.** A full block of verified tokens is *published* under an exact key:
(the serial of the block before it, its own token ids). A new session whose prompt starts
with published blocks takes them (reference counted) instead of recomputing them: users
sharing a system prompt or few-shot examples, or a client's next conversation after the
last one closed (freed blocks keep their content until the pool reuses them, oldest first).
Keys hold token ids, not hashes, and every publication gets a fresh serial, so a block
whose memory is reused can never be matched by a stale key: sharing is exact. A block is
never written while shared or published: a table shortened into the middle of one drops or
unpublishes it (``truncate``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Key = tuple[int, tuple[int, ...]]  # a published block: (parent's serial, its token ids)


class BlockManager:
    """Hands out blocks; a session's table grows with its length and shrinks on rollback."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 2:
            raise ValueError("the KV pool needs at least one usable block besides the pad block")
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # block 0 is the pad slot for reads; the rest are free, the oldest freed reused first
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self._refs = [0] * num_blocks
        self._published: dict[int, tuple[int, Key]] = {}  # block -> (its serial, its key)
        self._by_key: dict[Key, int] = {}  # (parent serial, token ids) -> block
        self._next_serial = 1  # 0 is the parent of a first block
        self.peak_used = 0
        self.prefix_hit_tokens = 0

    @property
    def capacity(self) -> int:
        """Usable blocks (the pad block excluded)."""
        return self.num_blocks - 1

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.capacity - len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def extra_blocks(self, table: list[int], length: int) -> int:
        """Blocks ``table`` still needs to hold ``length`` tokens."""
        return max(0, self.blocks_for(length) - len(table))

    def can_grow(self, table: list[int], length: int) -> bool:
        return self.extra_blocks(table, length) <= len(self._free)

    def grow(self, table: list[int], length: int) -> None:
        """Extend ``table`` in place to hold ``length`` tokens; the caller checked ``can_grow``."""
        need = self.extra_blocks(table, length)
        if need > len(self._free):
            raise MemoryError(f"{need} KV blocks needed, {len(self._free)} free")
        for _ in range(need):
            block, _ = self._free.popitem(last=False)
            self._unpublish(block)  # its memory is about to be overwritten
            self._refs[block] = 1
            table.append(block)
        self.peak_used = max(self.peak_used, self.used)

    def truncate(self, table: list[int], length: int) -> int:
        """Keep only the blocks holding the first ``length`` tokens (rollback moves a length);
        return the length actually kept. Positions from it on will be written again, so a
        kept partial block that is published is unpublished, or, when another table shares
        it, dropped as well (the length then falls back to the block's start)."""
        keep = self.blocks_for(length)
        while len(table) > keep:
            self._drop(table.pop())
        if length % self.block_size and table and table[-1] in self._published:
            if self._refs[table[-1]] > 1:
                self._drop(table.pop())
                return len(table) * self.block_size
            self._unpublish(table[-1])
        return length

    def release(self, table: list[int]) -> None:
        self.truncate(table, 0)

    def exclusive(self, table: Sequence[int]) -> int:
        """Blocks of ``table`` that releasing it would free (not shared with another)."""
        return sum(self._refs[block] == 1 for block in table)

    # ------------------------------------------------------------ shared prefixes

    def match_prefix(self, tokens: Sequence[int], limit: int) -> list[int]:
        """A new table holding the longest run of published full blocks that ``tokens[:limit]``
        starts with (each taken: referenced, and out of the free list if it was there)."""
        b, table, parent = self.block_size, [], 0
        for i in range(limit // b):
            block = self._by_key.get((parent, tuple(tokens[i * b:(i + 1) * b])))
            if block is None:
                break
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1
            table.append(block)
            parent = self._published[block][0]
        self.peak_used = max(self.peak_used, self.used)
        self.prefix_hit_tokens += len(table) * b
        return table

    def publish(self, table: Sequence[int], tokens: Sequence[int], cached: int,
                published: int) -> int:
        """Publish ``table``'s full blocks of verified, cached tokens after the first
        ``published`` (already done); return how many leading blocks are published now."""
        b = self.block_size
        parent = self._published[table[published - 1]][0] if published else 0
        for i in range(published, min(cached // b, len(table))):
            block = table[i]
            if block not in self._published:
                key = (parent, tuple(tokens[i * b:(i + 1) * b]))
                if key in self._by_key:  # the same content computed twice: keep the first
                    return i
                self._published[block], self._by_key[key] = (self._next_serial, key), block
                self._next_serial += 1
            parent = self._published[block][0]
            published = i + 1
        return published

    def _drop(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free[block] = None  # content kept (and matchable) until reused

    def _unpublish(self, block: int) -> None:
        entry = self._published.pop(block, None)
        if entry is not None:
            del self._by_key[entry[1]]

    def slots(self, table: list[int], start: int, stop: int) -> npt.NDArray[np.int64]:
        """Pool slot of each position in ``start..stop-1`` (shape [stop - start])."""
        b = self.block_size
        pos = np.arange(start, stop, dtype=np.int64)
        return np.asarray(table, dtype=np.int64)[pos // b] * b + pos % b
