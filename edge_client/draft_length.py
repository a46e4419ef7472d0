"""Choose the draft length k per round from live acceptance and timing measurements.

With per-token acceptance probability a, a draft of k tokens yields on average
(1 - a^(k+1)) / (1 - a) tokens (accepted prefix plus the target's own token). A round costs
k + 1 draft evaluations (its k tokens and the target's own, which the draft reads before
drafting on) plus one round trip R (wire + verification). When drafting is pipelined, a
round whose draft and bonus guess all hold (probability about a^(k+1)) overlaps the next
draft with the round trip and costs max((k + 1) * t_draft, R); any other round costs the
sum.
Drafting with nothing in flight may run on more cores (``t_idle``, see ``round_seconds``).
We pick the k that maximises tokens per second under these running estimates; the
benchmark's bound (``tools/bound.py``) uses the same round cost with measured parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def expected_tokens(a: float, k: int) -> float:
    """Mean tokens a round yields for acceptance ``a`` and draft length ``k``."""
    if a >= 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def round_seconds(k: int, a: float, t_draft: float, trip: float, pipelined: bool,
                  t_idle: float = 0.0) -> float:
    """Expected seconds of one round of draft length ``k`` (derivation: ``tools/bound.py``).

    ``t_draft``: seconds a draft evaluation while a verify may run beside it; ``t_idle`` (0:
    the same): with nothing of ours in flight, when a client on the daemon's machine also
    takes its cores. A round with ``k >= 1`` costs the draft ``k + 1`` evaluations: its k
    tokens and the target's own token, which the draft must read before it can draft on
    (k = 0 leaves the draft idle). Sequential: ``(k + 1) t_idle + trip``. Pipelined: a round
    whose drafts and bonus guess all hold (``a^(k+1)``) costs the trip plus the drafting
    that did not fit in it, done after the verdict at ``t_idle``; any other round costs the
    sum.
    """
    t_idle = t_idle or t_draft
    evals = k + 1 if k > 0 else 0
    if not pipelined:
        return evals * t_idle + trip
    hit = a ** (k + 1)
    overhang = max(0.0, evals * t_draft - trip) * (t_idle / t_draft if t_draft else 1.0)
    return hit * (trip + overhang) + (1.0 - hit) * (evals * t_idle + trip)


@dataclass(slots=True)
class RoundTripModel:
    """Round trip as a line in the draft length: R(k) = base + per_token * (k + 1).

    Wider verification passes cost more (on a CPU target, much more than one token), so a
    constant R would push k too high. Exponentially weighted least squares over recent
    rounds; the prior is two pseudo-rounds, which real rounds soon outweigh.
    """

    forget: float = 0.9
    n: float = 2.0
    sx: float = 18.0  # prior rounds at k + 1 = 1 and 17 taking 70 ms and 170 ms
    sy: float = 0.24
    sxx: float = 290.0
    sxy: float = 2.96

    def add(self, width: int, seconds: float) -> None:
        f = self.forget
        self.n, self.sx, self.sy = f * self.n + 1, f * self.sx + width, f * self.sy + seconds
        self.sxx, self.sxy = f * self.sxx + width * width, f * self.sxy + width * seconds

    def predict(self, width: int) -> float:
        var = self.n * self.sxx - self.sx * self.sx
        slope = max(0.0, (self.n * self.sxy - self.sx * self.sy) / var) if var > 1e-9 else 0.0
        base = (self.sy - slope * self.sx) / self.n
        return max(1e-4, base + slope * width)


@dataclass(slots=True)
class DraftLength:
    """Running estimates; ``next_k`` is called before each round, ``observe`` after it."""

    k_max: int
    k_min: int = 1
    adaptive: bool = True
    pipelined: bool = False
    timed: bool = True  # False: adapt to acceptance only, so a seeded run cuts rounds alike
    smoothing: float = 0.2
    accepted: float = 8.0  # prior: pseudo-counts of accepted and rejected draft tokens
    rejected: float = 1.0
    draft_s_per_token: float = 0.01
    idle_draft_s_per_token: float = 0.0  # drafting with nothing in flight (0: not seen yet)
    round_trip: RoundTripModel = field(default_factory=RoundTripModel)

    @property
    def acceptance(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def next_k(self, remaining: int) -> int:
        """Draft length for the next round, never more than the tokens still wanted - 1."""
        cap = max(0, min(self.k_max, remaining - 1))
        if not self.adaptive or cap <= self.k_min:
            return cap
        a = min(self.acceptance, 0.999)

        def rate(k: int) -> float:
            cost = round_seconds(k, a, self.draft_s_per_token, self.round_trip.predict(k + 1),
                                 self.pipelined, self.idle_draft_s_per_token)
            return expected_tokens(a, k) / cost

        return max(range(self.k_min, cap + 1), key=rate)

    def observe(self, k: int, accepted: int, draft_s_per_token: float,
                round_trip_s: float, width: int = 0, idle_draft_s_per_token: float = 0.0
                ) -> None:
        """Fold one round in; a full accept says nothing about rejection, a miss counts one.
        ``width``: tokens the daemon verified when not k + 1 (a tree of more nodes than its
        depth ``k``). ``draft_s_per_token``: drafting beside a verify (0: none this round);
        ``idle_draft_s_per_token``: drafting with nothing in flight (0: none)."""
        decay = 1.0 - self.smoothing
        self.accepted = self.accepted * decay + accepted
        self.rejected = self.rejected * decay + (1.0 if accepted < k else 0.0)
        if not self.timed:
            return
        if k > 0 and draft_s_per_token > 0:
            self.draft_s_per_token += self.smoothing * (draft_s_per_token - self.draft_s_per_token)
        if idle_draft_s_per_token > 0:
            self.idle_draft_s_per_token = (
                idle_draft_s_per_token if not self.idle_draft_s_per_token else
                self.idle_draft_s_per_token
                + self.smoothing * (idle_draft_s_per_token - self.idle_draft_s_per_token))
        self.round_trip.add(width or k + 1, round_trip_s)
