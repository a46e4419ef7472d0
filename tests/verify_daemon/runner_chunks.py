"""A plain chunk for ModelRunner tests (the engine's own carries a session)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Piece:
    blocks: list[int]
    start: int
    tokens: list[int]
    logits: bool
    parents: Sequence[int] | None = None  # a token tree (chunk indices, -1 for the root)
