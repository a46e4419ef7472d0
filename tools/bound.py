"""The best tokens/s any draft-length schedule can reach on this machine, from its parts.

Terms (all measured in the same benchmark run):

- ``t_d``: the draft's seconds per token at its threads, while a verify may run beside it;
- ``t_i``: the same with nothing of ours in flight (a client on the daemon's machine then
  takes the daemon's cores too, ``edge_client/threads.py``; elsewhere ``t_i = t_d``);
- ``V(w)``: the target's seconds for one forward pass over ``w`` new tokens with a KV cache,
  at the daemon's threads (a plain transformers forward: what a perfect daemon would pay);
- ``R``: the wire's round trip, with no verification in it (a PING through the same path);
- ``a``: per-token acceptance, each draft token accepted with probability ``a``
  independently (the geometric model ``GenerationStats.per_token_acceptance`` estimates).

**One round.** A draft of ``k`` tokens is verified in one pass of width ``k + 1`` (the
draft plus the target's own next token). The accepted prefix has length ``j`` with
P(j) = a^j (1 - a) for j < k and a^k for j = k; the round yields j + 1 tokens, so on average

    E(k) = sum_{j=0..k} a^j = (1 - a^(k+1)) / (1 - a).

**The draft's work a round.** Every token the answer gains must be read by the draft before
it can draft past it: the k drafts are read as they are made, and the target's own token
(the bonus, or the correction after a miss) costs one more evaluation. So a round with
k >= 1 costs the draft ``n = k + 1`` evaluations; at k = 0 the draft is idle.

**Sequential** (draft, then send, then wait): a round costs ``C(k) = n t_i + R + V(k+1)``.

**Pipelined** (the client drafts the next round while this one is in flight): the tokens
drafted ahead are usable only when all ``k`` drafts and the draft's guess of the target's
bonus token hold, probability ``h = a^(k+1)``. Then the round costs the trip ``T = R +
V(k+1)`` plus whatever drafting did not fit in it, done after the verdict at ``t_i``:
``T + max(0, n t_d - T) t_i / t_d`` (with ``t_i = t_d`` this is ``max(n t_d, T)``);
otherwise drafting and the trip in turn:

    C_p(k) = h H + (1 - h) (n t_i + T),
    H = max(T - R, n t_d) if n t_d <= T, else T + (n t_d - T) t_i / t_d.

The ``T - R``: the drafts made ahead are also *sent* ahead, chained on that guess
(``spec_loop.py``), so when it holds the next pass starts as this one ends (or as its draft
is made, if that is later) and the next verdict follows this one by a pass, not by a round
trip. Drafting that outlasts the trip chains nothing: the verdict is back first.

**Why one k is optimal.** Acceptance is independent across rounds, so rounds are renewal
cycles: over many rounds tokens/s = sum(tokens) / sum(seconds) -> E[tokens] / E[cost], and a
schedule that mixes draft lengths gets a weighted mean of the per-k ratios, never more than
the largest. So the bound is ``max_k E(k) / C(k)`` over 0 <= k <= ``k_max``; k = 0 is the
daemon decoding alone, one token per round trip, ``1 / (R + V(1))``.

**Many sessions on one server** (``best_batched``): N sessions verified together advance
in one pass of width N (k + 1), each yielding E(k) tokens, after prefilling all their
prompt tokens P. For T generated tokens in all (sessions assumed equally long, which only
helps), the time is at least ``F(P) + T V(N (k + 1)) / (N E(k))``; the bound is T over the
least such time, over k. At k = 0 it is what any target-only engine could reach. ``F(P)``
is the least time P prompt tokens take in passes of any widths: one pass when P is within
the measured widths, else P at the cheapest measured cost per token (``V`` is linear
between measured widths, so ``V(w) / w`` is least at one of them). One pass of all of P
would overstate it: N separate prompts are not one long sequence, whose attention grows
with its square (measured: 64 sessions' 3,800 prompt tokens as one pass would cost more
than the whole run took).

Measured / bound says how much of what this machine allows a run achieved. What the bound
leaves out on purpose: the daemon's own overhead beyond a plain forward, prefill, and
acceptance that varies within a text (a schedule that knew each round's acceptance could
beat the iid bound; none can know it in advance).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass

from edgespec.edge_client.draft_length import expected_tokens, round_seconds


@dataclass(frozen=True, slots=True)
class VerifyCost:
    """``V(w)`` from a table of measured widths: linear between measured points and along
    the last segment beyond them (a CPU forward grows about linearly in width)."""

    widths: tuple[int, ...]
    seconds: tuple[float, ...]

    @classmethod
    def from_table(cls, table: Mapping[int, float]) -> VerifyCost:
        if not table:
            raise ValueError("need at least one measured width")
        widths = tuple(sorted(table))
        if widths[0] < 1:
            raise ValueError("widths start at 1")
        return cls(widths, tuple(float(table[w]) for w in widths))

    def fill(self, tokens: int) -> float:
        """``F(P)``: the least seconds ``tokens`` prompt tokens take in passes of any widths."""
        if tokens <= 0:
            return 0.0
        per_token = min(s / w for w, s in zip(self.widths, self.seconds, strict=True))
        direct = self(tokens) if tokens <= self.widths[-1] else float("inf")
        return min(direct, tokens * per_token) if tokens > self.widths[0] else self(tokens)

    def __call__(self, width: int) -> float:
        ws, ss = self.widths, self.seconds
        if len(ws) == 1:
            return ss[0]
        i = bisect.bisect_left(ws, width)
        if i < len(ws) and ws[i] == width:
            return ss[i]
        lo = min(max(i - 1, 0), len(ws) - 2)  # the segment to interpolate or extend
        slope = (ss[lo + 1] - ss[lo]) / (ws[lo + 1] - ws[lo])
        return max(0.0, ss[lo] + slope * (width - ws[lo]))


@dataclass(frozen=True, slots=True)
class Parts:
    """The component costs of one configuration (seconds)."""

    draft_s_per_token: float
    verify: VerifyCost
    round_trip_s: float
    draft_idle_s_per_token: float = 0.0  # t_i; 0: the same as ``draft_s_per_token``


@dataclass(frozen=True, slots=True)
class Bound:
    """The best rate and the draft length that reaches it, both ways."""

    sequential_tok_s: float
    sequential_k: int
    pipelined_tok_s: float
    pipelined_k: int

    def as_dict(self) -> dict[str, float | int]:
        return {"bound_sequential_tok_s": round(self.sequential_tok_s, 2),
                "bound_sequential_k": self.sequential_k,
                "bound_pipelined_tok_s": round(self.pipelined_tok_s, 2),
                "bound_pipelined_k": self.pipelined_k}


def round_cost(parts: Parts, a: float, k: int, pipelined: bool) -> float:
    """Expected seconds of one round with draft length ``k``."""
    trip = parts.round_trip_s + parts.verify(k + 1)
    return round_seconds(k, a, parts.draft_s_per_token, trip, pipelined,
                         parts.draft_idle_s_per_token,
                         saved=parts.round_trip_s if pipelined else 0.0)


def rate(parts: Parts, a: float, k: int, pipelined: bool) -> float:
    """Expected tokens/s of a schedule that always drafts ``k`` tokens."""
    return expected_tokens(a, k) / round_cost(parts, a, k, pipelined)


def best(parts: Parts, a: float, k_max: int) -> Bound:
    """The bound: the best constant draft length (optimal for iid acceptance, see above)."""
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {a}")
    ks = range(k_max + 1)
    k_seq = max(ks, key=lambda k: rate(parts, a, k, False))
    k_pipe = max(ks, key=lambda k: rate(parts, a, k, True))
    return Bound(rate(parts, a, k_seq, False), k_seq, rate(parts, a, k_pipe, True), k_pipe)


def best_batched(verify: VerifyCost, a: float, sessions: int, tokens: int,
                 prompt_tokens: int, k_max: int) -> tuple[float, int]:
    """The best tokens/s of ``sessions`` verified together, and its draft length."""
    if tokens <= 0 or sessions <= 0:
        return 0.0, 0

    def tok_s(k: int) -> float:
        per_step = sessions * expected_tokens(a, k)
        seconds = verify.fill(prompt_tokens) + tokens * verify(sessions * (k + 1)) / per_step
        return tokens / seconds

    k = max(range(k_max + 1), key=tok_s)
    return tok_s(k), k
