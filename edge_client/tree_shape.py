"""Chain or tree, and how big, for the next round: measured per session.

A round in mode m (chain or tree) yields T_m tokens and costs S_m seconds on the user's side
(drafting, then waiting for the verdict). Over many rounds the session runs at

    rate_m = E[T_m] / E[S_m]

tokens/s. Both means are exponentially weighted over that mode's *steady* rounds (a round
whose previous round had the same mode: the first chain round after a tree has nothing
drafted ahead, so it would undersell chains), and each round runs the mode with the higher
rate. The mode not chosen is re-measured in a burst of ``explore_rounds`` rounds once every
``explore_every`` rounds, so a change (a longer round trip, a busier server, a harder
stretch of text) is noticed: seed 002's adaptive N, which falls back to a single chain
when extra candidates stop paying.

**Where trees cannot pay, auto does not try them.** A tree is drafted after the verdict
(which branch the target takes is known only then), so it gives up the chain's look-ahead,
which hides the whole next draft behind the round trip in a round whose k drafts and bonus
guess all hold: probability ``h = a^(k+1)``, with ``a`` the per-token acceptance of this
session's chain rounds (accepted / (accepted + missed rounds), over about the last 20).
While ``h >= hit_gate`` (0.5) most chain rounds already cost only the trip, and a tree,
which adds side nodes to draft and verify, would pay for rescuing the few misses with the
look-ahead of the many hits; auto then stays on chains without exploring. It also waits for
``gate_after`` (8) chain rounds before trying a tree at all. Measured: the default pair (a
about 0.96-0.99, k about 8: h 0.69-0.91) stays on chains; the hard pair (a about 0.72-0.8,
k about 3: h 0.27-0.41) measures both. A client that does not draft ahead
(``--no-pipeline``) forfeits nothing and is not gated.

**A busy server gets chains.** The daemon's VERDICT budget is below the tree this session
would draft (``4k`` nodes) only when its step is full or its passes are the bottleneck
(``verify_daemon/draft_budget.py``). Then every token sent takes time from all users, and a
tree's side nodes are the tokens least likely to be kept: per token the chain's next one
yields more, so every shape ("tree" too) drafts a chain of ``min(k, budget)``. Measured
with the hard pair at 16 and 64 replayed sessions (``tools/bench budget``): trees cut to the
budget served 0.74-0.92x the chains' tokens/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CHAIN, TREE, AUTO = "chain", "tree", "auto"
SHAPES = (AUTO, TREE, CHAIN)
MAX_NODES = 64  # the wire's bound on draft tokens
MAX_DEPTH = 32  # the wire's bound on a tree's depth


@dataclass(slots=True)
class ModeRate:
    """EWMA of tokens and seconds per round for one mode (a prior of one modest round)."""

    tokens: float = 2.0
    seconds: float = 0.1
    rounds: int = 0
    smoothing: float = 0.25

    @property
    def rate(self) -> float:
        return self.tokens / max(self.seconds, 1e-6)

    def add(self, tokens: int, seconds: float) -> None:
        w = self.smoothing if self.rounds else 1.0  # the first real round replaces the prior
        self.tokens += w * (tokens - self.tokens)
        self.seconds += w * (seconds - self.seconds)
        self.rounds += 1


@dataclass(frozen=True, slots=True)
class Shape:
    """What the next round drafts: a chain of ``depth`` or a tree of ``nodes`` up to it."""

    mode: str
    depth: int
    nodes: int


@dataclass(slots=True)
class TreeShape:
    """Per-session choice between chains and trees; ``next`` before a round, ``observe``
    after it. ``shape``: "auto" (measured, above), or every round a "tree" (where the
    budget leaves room for one) or a "chain" (``--draft-shape``)."""

    shape: str = AUTO
    max_nodes: int = MAX_NODES  # the daemon's --max-draft (WELCOME), at most the wire's bound
    node_factor: float = 4.0
    depth_factor: float = 2.0
    explore_every: int = 24
    explore_rounds: int = 3
    hit_gate: float = 0.5  # auto stays on chains while a chain round's look-ahead holds this often
    gate_after: int = 8  # chain rounds seen before auto may try a tree
    memory: float = 0.95  # per chain round: the acceptance estimate weighs about 20 rounds
    chain_accepted: float = 0.0  # decayed sums over chain rounds: tokens accepted...
    chain_misses: float = 0.0  # ...and rounds that ended at a rejection
    chain_rounds: int = 0
    rates: dict[str, ModeRate] = field(default_factory=lambda: {CHAIN: ModeRate(),
                                                                 TREE: ModeRate()})
    budget: int = 0  # the daemon's last VERDICT budget (0: none said)
    round_no: int = 0
    last_mode: str = ""  # the mode of the round observed last
    burst: int = 0  # rounds left of the current exploration burst
    burst_mode: str = CHAIN  # the mode it explores

    @property
    def chain_acceptance(self) -> float:
        """Per-token acceptance of recent chain rounds (the geometric estimate)."""
        seen = self.chain_accepted + self.chain_misses
        return self.chain_accepted / seen if seen else 0.0

    def next(self, k: int, timed: bool = True, room: int = MAX_NODES,
             pipelined: bool = True) -> Shape:
        """The shape for a round whose best chain length is ``k``, with ``room`` tokens still
        wanted after the target's own. ``timed=False`` (a seeded sampled run, which must
        draw the same tokens every time) keeps "auto" on chains: a sampled tree's siblings
        use other draws than a chain's correction, so a choice made from timings would
        change the tokens. ``pipelined``: the client drafts ahead in chain rounds, so auto
        keeps chains while that look-ahead mostly holds (above)."""
        self.round_no += 1
        nodes = min(math.ceil(self.node_factor * k), self.max_nodes)
        # A budget below the tree says the server is the bottleneck: its tokens then go
        # where each yields the most, the chain's next one (draft_budget.py)
        squeezed = 0 < self.budget < nodes
        if self.budget > 0:
            k = min(k, self.budget)
        depth = min(math.ceil(self.depth_factor * k), nodes - 1, room, MAX_DEPTH)
        gated = pipelined and (self.chain_rounds < self.gate_after
                               or self.chain_acceptance ** (k + 1) >= self.hit_gate)
        auto_chain = self.shape == AUTO and (not timed or gated)
        if self.shape == CHAIN or auto_chain or squeezed or depth < 1 or nodes <= k:
            return Shape(CHAIN, k, k)
        mode = TREE if self.shape == TREE else self._choose()
        if mode == CHAIN:
            return Shape(CHAIN, k, k)
        per_level = self.node_factor / self.depth_factor  # a shallower tree is also narrower
        return Shape(TREE, depth, min(nodes, max(depth + 1, math.ceil(per_level * depth))))

    def _choose(self) -> str:
        chain, tree = self.rates[CHAIN], self.rates[TREE]
        for mode, rate in ((CHAIN, chain), (TREE, tree)):
            if rate.rounds < 2:  # measure each mode (steadily) before comparing
                return mode
        best, other = (TREE, CHAIN) if tree.rate >= chain.rate else (CHAIN, TREE)
        if self.round_no % self.explore_every == 0:
            self.burst, self.burst_mode = self.explore_rounds, other
        if self.burst > 0:
            self.burst -= 1
            return self.burst_mode
        return best

    def begin(self) -> None:
        """A new answer: its first round carries the prompt's prefill and has nothing drafted
        ahead, so it is not a steady round of either mode."""
        self.last_mode = ""

    def observe(self, mode: str, tokens: int, seconds: float, budget: int, drafted: int = 0,
                accepted: int = 0) -> None:
        """Fold in one round: tokens it added, seconds it cost, the daemon's new budget, and
        for a chain its draft length and accepted tokens. Only a steady round (the same
        mode as the round before) counts toward the rates."""
        if mode == CHAIN and drafted > 0:
            self.chain_accepted = self.memory * self.chain_accepted + accepted
            self.chain_misses = self.memory * self.chain_misses + (accepted < drafted)
            self.chain_rounds += 1
        if mode == self.last_mode:
            self.rates[mode].add(tokens, seconds)
        self.last_mode = mode
        self.budget = budget
