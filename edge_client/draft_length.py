"""Choose the draft length k per round from live acceptance and timing measurements.

With per-token acceptance probability a, a draft of k tokens yields on average
(1 - a^(k+1)) / (1 - a) tokens (accepted prefix plus the target's own token). A round costs
k drafting steps plus one round trip R (wire + verification). When drafting is pipelined,
a round whose draft and bonus guess all hold (probability about a^(k+1)) overlaps the next
draft with the round trip and costs max(k * t_draft, R); any other round costs the sum.
We pick the k that maximises tokens per second under these running estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def expected_tokens(a: float, k: int) -> float:
    """Mean tokens a round yields for acceptance ``a`` and draft length ``k``."""
    if a >= 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


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
            drafting, trip = k * self.draft_s_per_token, self.round_trip.predict(k + 1)
            cost = drafting + trip
            if self.pipelined:
                hit = a ** (k + 1)
                cost = hit * max(drafting, trip) + (1.0 - hit) * cost
            return expected_tokens(a, k) / cost

        return max(range(self.k_min, cap + 1), key=rate)

    def observe(self, k: int, accepted: int, draft_s_per_token: float,
                round_trip_s: float, width: int = 0) -> None:
        """Fold one round in; a full accept says nothing about rejection, a miss counts one.
        ``width``: tokens the daemon verified when not k + 1 (a tree of more nodes than its
        depth ``k``)."""
        decay = 1.0 - self.smoothing
        self.accepted = self.accepted * decay + accepted
        self.rejected = self.rejected * decay + (1.0 if accepted < k else 0.0)
        if not self.timed:
            return
        if k > 0:
            self.draft_s_per_token += self.smoothing * (draft_s_per_token - self.draft_s_per_token)
        self.round_trip.add(width or k + 1, round_trip_s)
