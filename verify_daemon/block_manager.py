"""Paged KV memory: fixed-size blocks from one pool, one block table per session.

The pool holds ``num_blocks`` blocks of ``block_size`` token slots each; block 0 is never
handed out (padding reads point at it), so a session's token at position p lives in slot
``table[p // block_size] * block_size + p % block_size``. Nothing here touches tensors: the
runner owns the memory, this class only decides who owns which block, so the budget can be
checked (and tested) without a model.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt


class BlockManager:
    """Hands out blocks; a session's table grows with its length and shrinks on rollback."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 2:
            raise ValueError("the KV pool needs at least one usable block besides the pad block")
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(1, num_blocks))  # block 0: pad slot for reads
        self.peak_used = 0

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
        table.extend(self._free.popleft() for _ in range(need))
        self.peak_used = max(self.peak_used, self.used)

    def truncate(self, table: list[int], length: int) -> None:
        """Keep only the blocks holding the first ``length`` tokens (rollback moves a length)."""
        keep = self.blocks_for(length)
        while len(table) > keep:
            self._free.append(table.pop())

    def release(self, table: list[int]) -> None:
        self.truncate(table, 0)

    def slots(self, table: list[int], start: int, stop: int) -> npt.NDArray[np.int64]:
        """Pool slot of each position in ``start..stop-1`` (shape [stop - start])."""
        b = self.block_size
        pos = np.arange(start, stop, dtype=np.int64)
        return np.asarray(table, dtype=np.int64)[pos // b] * b + pos % b
