"""One user's stream on the daemon: its verified tokens, its KV blocks, its waiting request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgespec.wire.codec import SamplingParams, SparseQ


@dataclass(slots=True)
class Work:
    """A request the scheduler still has to serve for one session (OPEN prefill or DRAFT)."""

    kind: str  # "open" | "draft"
    seq: int  # the request id the reply must echo
    epoch: int  # the request's connection epoch, echoed too (one per session: bounded)
    arrived_step: int
    arrived_at: float
    draft: list[int] = field(default_factory=list)
    q: SparseQ | None = None  # the draft's sparse distribution, when it sampled (issue 4)
    parents: list[int] | None = None  # a token tree: each node's parent (-1: the root)
    root: int = -1  # a chained draft: the guessed next token it continues (wire/codec.py)
    base: int = 0  # ... and the session length it continues, once that guess holds


@dataclass(slots=True)
class Session:
    """Invariant between rounds: the KV pool holds ``tokens[:cached]`` and, once the session is
    open, ``cached == len(tokens) - 1``.

    The last verified token is not yet cached: the next round feeds it first, followed by the
    draft, so one forward pass scores every draft position. While an OPEN is being prefilled
    (in chunks), ``cached`` is smaller.
    """

    sid: int
    peer: bytes
    tokens: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    prompt_length: int
    last_active: float
    blocks: list[int] = field(default_factory=list)  # block table, owned by the BlockManager
    cached: int = 0
    published: int = 0  # leading blocks published for other sessions to share (block_manager)
    pending: Work | None = None
    queued: Work | None = None  # a chained DRAFT waiting on ``pending``'s verdict (one at most)
    admitted_step: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    rng: Any = None  # torch.Generator, reseeded per position from sampling.seed (sampling.py)
    owner: str = ""  # the CURVE client key that opened it ("" without CURVE): only it may re-open
    address: str = ""  # the source address (an IPv6 /64) of its connection: bounded per address
    epoch: int = 0  # epoch of the OPEN that last (re)built it (epochs.py)
    hits: float = 0.0  # decayed draft tokens accepted...
    misses: float = 0.0  # ...and rounds that ended at a rejected one (draft_budget.py)

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def acceptance(self) -> float:
        """Per-token acceptance of recent rounds, from a prior of 0.8 worth two tokens."""
        return (self.hits + 1.6) / (self.hits + self.misses + 2.0)

    def observe_round(self, accepted: int, depth: int, memory: float = 0.9) -> None:
        """One verified round: ``accepted`` of a draft ``depth`` deep (a tree's deepest)."""
        self.hits = memory * self.hits + accepted
        self.misses = memory * self.misses + (accepted < depth)

    @property
    def to_prefill(self) -> int:
        """Tokens still to run before the session can verify drafts."""
        return len(self.tokens) - 1 - self.cached

    @property
    def idle(self) -> bool:
        """No request waiting: the client is drafting (or gone); evictable under pressure."""
        return self.pending is None
