"""One user's stream on the daemon: its verified tokens and the KV cache that mirrors them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgespec.wire.codec import SamplingParams


@dataclass(slots=True)
class Session:
    """Invariant between rounds: the cache holds KV for ``tokens[:-1]``.

    The last verified token is not yet in the cache: the next round feeds it first, followed
    by the draft, so one forward pass scores every draft position.
    """

    sid: int
    peer: bytes
    tokens: list[int]
    cache: Any
    sampling: SamplingParams
    max_new_tokens: int
    prompt_length: int
    last_active: float
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    rng: Any = None  # torch.Generator, reseeded per position from sampling.seed (sampling.py)

    @property
    def length(self) -> int:
        return len(self.tokens)
