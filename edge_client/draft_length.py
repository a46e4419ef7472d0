"""Choose the draft length k per round from live acceptance and timing measurements.

With per-token acceptance probability a, a draft of k tokens yields on average
(1 - a^(k+1)) / (1 - a) tokens (accepted prefix plus the target's own token). A round costs
k + 1 draft evaluations (its k tokens and the target's own, which the draft reads before
drafting on) plus one round trip R (wire + verification). When drafting is pipelined, a
round whose draft and bonus guess all hold (probability about a^(k+1)) overlaps the next
draft with the round trip and costs max((k + 1) * t_draft, R); any other round costs the
sum. When such a draft is also sent ahead (chained, ``spec_loop.py``), the next pass starts
as this one ends and a round that holds saves the wire W too: it costs R - W.
Drafting with nothing in flight may run on more cores (``t_idle``, see ``round_seconds``).
We pick the k that maximises tokens per second under these running estimates; the
benchmark's bound (``tools/bound.py``) uses the same round cost with measured parts.
R is measured per verify width (``RoundTripModel``), and every ``PROBE_EVERY`` rounds a
shorter length whose width is unmeasured (or stale) and that could beat the chosen one is
drafted instead, so a step in the daemon's cost below the chosen k is found, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROBE_EVERY = 4  # rounds between two probes of a neighbouring draft length
PROBE_SEEN = 2  # rounds a width needs before its measured cost is trusted
PROBE_STALE = 64  # rounds after which a width's cost is measured again


def expected_tokens(a: float, k: int) -> float:
    """Mean tokens a round yields for acceptance ``a`` and draft length ``k``."""
    if a >= 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def round_seconds(k: int, a: float, t_draft: float, trip: float, pipelined: bool,
                  t_idle: float = 0.0, hit: float | None = None, saved: float = 0.0) -> float:
    """Expected seconds of one round of draft length ``k`` (derivation: ``tools/bound.py``).

    ``t_draft``: seconds a draft evaluation while a verify may run beside it; ``t_idle`` (0:
    the same): with nothing of ours in flight, when a client on the daemon's machine also
    takes its cores. A round with ``k >= 1`` costs the draft ``k + 1`` evaluations: its k
    tokens and the target's own token, which the draft must read before it can draft on
    (k = 0 leaves the draft idle). Sequential: ``(k + 1) t_idle + trip``. Pipelined: a round
    whose drafts and bonus guess all hold (``a^(k+1)``) costs the trip plus the drafting
    that did not fit in it, done after the verdict at ``t_idle``; any other round costs the
    sum. ``hit``: that probability when known otherwise than as ``a^(k+1)``. ``saved``: what
    such a round saves besides when the next draft goes out chained before its verdict (the
    wire W: the next pass starts as this one ends); it costs ``max(trip - W, drafting)``
    then, as the next pass cannot start before its draft is made, and the drafting must end
    within the trip (else the verdict comes first and nothing is chained).
    """
    t_idle = t_idle or t_draft
    evals = k + 1 if k > 0 else 0
    if not pipelined:
        return evals * t_idle + trip
    hit = a ** (k + 1) if hit is None else hit
    drafting = evals * t_draft
    if drafting <= trip:
        held = max(trip - saved, drafting)
    else:
        held = trip + (drafting - trip) * (t_idle / t_draft if t_draft else 1.0)
    return hit * held + (1.0 - hit) * (evals * t_idle + trip)


@dataclass(slots=True)
class RoundTripModel:
    """Round trip by verify width: R(w) = wire + V(w).

    ``wire``: the round trip less the daemon's own verify time (each VERDICT says it), one
    running mean for every width. ``V(w)``: a running mean per width seen. On a CPU target V
    is a staircase, not a line (on one AMD box with verifyd's linear-layer plan: flat from 1
    to 4 tokens, then about 40 % more at 5), and a line misfits it by tens of ms exactly
    where the best k lies. A width not yet seen is read off a least-squares line through all
    verify times (with a prior of two pseudo-rounds), clipped between its seen neighbours so
    that V never falls with the width. ``unsure`` says which widths to measure (again):
    ``DraftLength`` probes those next to its choice. One model serves every session of a
    client, as the costs are the daemon's and the link's, not a conversation's.
    """

    forget: float = 0.9
    smoothing: float = 0.3
    n: float = 2.0
    sx: float = 18.0  # prior rounds at width 1 and 17 taking 70 ms and 170 ms
    sy: float = 0.24
    sxx: float = 290.0
    sxy: float = 2.96
    wire: float = 0.0
    wire_seen: bool = False
    rounds: int = 0
    table: dict[int, float] = field(default_factory=dict)  # width -> verify seconds
    seen: dict[int, int] = field(default_factory=dict)  # width -> rounds measured
    last: dict[int, int] = field(default_factory=dict)  # width -> round last measured

    def add(self, width: int, seconds: float, verify_s: float = 0.0) -> None:
        """One round of ``width`` verified tokens that took ``seconds`` from send to verdict,
        ``verify_s`` of them in the daemon's pass (0: not reported, all counted as verify)."""
        if 0.0 < verify_s <= seconds:
            verify, wire = verify_s, seconds - verify_s
            self.wire = self.wire + self.smoothing * (wire - self.wire) if self.wire_seen else wire
            self.wire_seen = True
        else:
            verify = max(0.0, seconds - self.wire)
        f = self.forget
        self.n, self.sx, self.sy = f * self.n + 1, f * self.sx + width, f * self.sy + verify
        self.sxx, self.sxy = f * self.sxx + width * width, f * self.sxy + width * verify
        old = self.table.get(width)
        self.table[width] = verify if old is None else old + self.smoothing * (verify - old)
        self.seen[width] = self.seen.get(width, 0) + 1
        self.rounds += 1
        self.last[width] = self.rounds

    def _line(self, width: int) -> float:
        var = self.n * self.sxx - self.sx * self.sx
        slope = max(0.0, (self.n * self.sxy - self.sx * self.sy) / var) if var > 1e-9 else 0.0
        return (self.sy - slope * self.sx) / self.n + slope * width

    def verify(self, width: int) -> float:
        """Estimated seconds of the daemon's pass over ``width`` tokens."""
        if width in self.table:
            return self.table[width]
        line = self._line(width)
        below = max((v for w, v in self.table.items() if w < width), default=0.0)
        above = min((v for w, v in self.table.items() if w > width), default=float("inf"))
        return min(max(line, below), above) if below <= above else line

    def predict(self, width: int) -> float:
        return max(1e-4, self.wire + self.verify(width))

    def unsure(self, width: int) -> bool:
        """Not measured ``PROBE_SEEN`` times yet, or not for ``PROBE_STALE`` rounds (load
        and context change what a pass costs)."""
        return (self.seen.get(width, 0) < PROBE_SEEN
                or self.rounds - self.last.get(width, 0) > PROBE_STALE)

    def lowest(self, width: int) -> float:
        """The least round trip ``width`` could take: the wire plus the dearest narrower
        pass measured ``PROBE_SEEN`` times (a wider pass never costs less), 0 for that when
        there is none."""
        verify = max((v for w, v in self.table.items()
                      if w < width and self.seen[w] >= PROBE_SEEN), default=0.0)
        return max(1e-4, self.wire + verify)


PRIOR_ROUND_TRIP = RoundTripModel()  # never fed: what an untimed policy reads


@dataclass(slots=True)
class DepthProfile:
    """How acceptance varies with the draft position, relative to the mean: ``ratio(i)``.

    The geometric model takes every position to hold with the same ``a``; drafts do not:
    after the first token or two a draft that holds tends to keep holding (code, a quoted
    phrase), so short drafts waste the long runs and the geometric model, fitted to many
    short misses, over-promises the first positions. Counts per position i (accepted, or the
    first miss; positions past a miss are unobserved) are kept over about 20 rounds, each
    shrunk by ``prior`` pseudo-counts towards the position before it (the first towards the
    mean; positions never drafted so far take the deepest one's), and read as a ratio to
    the acceptance over the same rounds, so the fast-moving level stays ``DraftLength``'s
    and only the shape comes from here.
    """

    memory: float = 0.95
    prior: float = 2.0
    accepted: list[float] = field(default_factory=list)  # [i]: position i + 1 held
    rejected: list[float] = field(default_factory=list)  # [i]: position i + 1 was the miss

    def observe(self, k: int, accepted: int) -> None:
        grow = k + 1 - len(self.accepted)
        if grow > 0:
            self.accepted.extend([0.0] * grow)
            self.rejected.extend([0.0] * grow)
        self.accepted[:] = [c * self.memory for c in self.accepted]
        self.rejected[:] = [c * self.memory for c in self.rejected]
        for i in range(min(accepted, k)):
            self.accepted[i] += 1.0
        if accepted < k:
            self.rejected[accepted] += 1.0

    def ratios(self, last: int) -> list[float]:
        """``ratio(1) .. ratio(last)`` in one pass (each position builds on the one before)."""
        held, missed = sum(self.accepted), sum(self.rejected)
        if held + missed <= 0.0 or held <= 0.0:
            return [1.0] * last
        mean = held / (held + missed)
        here, out = mean, []
        for i in range(last):  # each position shrunk towards the one before it
            acc = self.accepted[i] if i < len(self.accepted) else 0.0
            rej = self.rejected[i] if i < len(self.rejected) else 0.0
            here = (acc + self.prior * here) / (acc + rej + self.prior)
            out.append(here / mean)
        return out

    def ratio(self, position: int) -> float:
        """Acceptance at ``position`` (1 = the first draft token) over the mean acceptance."""
        return self.ratios(position)[-1] if position > 0 else 1.0


@dataclass(slots=True)
class DraftLength:
    """Running estimates; ``next_k`` is called before each round, ``observe`` after it.

    Position i holds with ``h_i = min(0.999, a * depth.ratio(i))`` given the ones before
    it; a draft of k yields ``E(k) = 1 + sum_{i<=k} prod_{j<=i} h_j`` tokens and its look-ahead
    is used with probability ``prod_{j<=k+1} h_j`` (with a flat profile these are the
    geometric model's ``expected_tokens`` and ``a^(k+1)``)."""

    k_max: int
    k_min: int = 1
    adaptive: bool = True
    pipelined: bool = False
    chained: bool = False  # a round that holds has sent the next draft before its verdict
    timed: bool = True  # False: adapt to acceptance only, so a seeded run cuts rounds alike
    smoothing: float = 0.2
    accepted: float = 8.0  # prior: pseudo-counts of accepted and rejected draft tokens
    rejected: float = 1.0
    draft_s_per_token: float = 0.01
    idle_draft_s_per_token: float = 0.0  # drafting with nothing in flight (0: not seen yet)
    round_trip: RoundTripModel = field(default_factory=RoundTripModel)
    depth: DepthProfile = field(default_factory=DepthProfile)
    since_probe: int = 0
    expected: float = 0.0  # tokens the last ``next_k`` expects its round to yield

    @property
    def acceptance(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def survival(self, last: int) -> list[float]:
        """``[1, P(position 1 holds), ..., P(positions 1..last all hold)]``."""
        a = min(self.acceptance, 0.999)
        out = [1.0]
        for ratio in self.depth.ratios(last):
            out.append(out[-1] * min(0.999, a * ratio))
        return out

    def next_k(self, remaining: int) -> int:
        """Draft length for the next round, never more than the tokens still wanted - 1.
        ``expected`` is then the tokens the model expects that round to yield."""
        cap = max(0, min(self.k_max, remaining - 1))
        held = self.survival(cap + 1)
        k = cap if not self.adaptive or cap <= self.k_min else self._choose(cap, held)
        self.expected = sum(held[:k + 1])
        return k

    def _choose(self, cap: int, held: list[float]) -> int:
        lengths = range(self.k_min, cap + 1)
        # untimed (a seeded run) must cut its rounds alike every time, so it never reads the
        # shared model, which other sessions of the client keep measuring
        trips = self.round_trip if self.timed else PRIOR_ROUND_TRIP
        saved = trips.wire if self.chained else 0.0
        best = max(lengths, key=lambda k: self._rate(k, held, trips.predict(k + 1), saved))
        self.since_probe += 1
        if self.timed and self.since_probe >= PROBE_EVERY:
            probe = self._probe(best, lengths, held, saved)
            if probe is not None:
                self.since_probe = 0
                return probe
        return best

    def _rate(self, k: int, held: list[float], trip: float, saved: float = 0.0) -> float:
        """Expected tokens per second of a round of ``k`` whose round trip takes ``trip``
        (``saved``: see ``round_seconds``)."""
        cost = round_seconds(k, 0.0, self.draft_s_per_token, trip, self.pipelined,
                             self.idle_draft_s_per_token, hit=held[k + 1], saved=saved)
        return sum(held[:k + 1]) / cost

    def _probe(self, best: int, lengths: range, held: list[float], saved: float = 0.0
               ) -> int | None:
        """The longest draft shorter than ``best`` whose width is unsure and that would
        beat ``best`` if its pass cost no more than the dearest trusted narrower one
        (optimism under uncertainty: a length is measured only if it could win). Only
        shorter ones: their rounds are cheap, and a wider width priced too low is corrected
        by drafting it, while a narrower one priced too high would never be drafted."""
        model = self.round_trip
        target = self._rate(best, held, model.predict(best + 1), saved)
        for k in range(best - 1, lengths.start - 1, -1):
            if (model.unsure(k + 1)
                    and self._rate(k, held, model.lowest(k + 1), saved) > target):
                return k
        return None

    def observe(self, k: int, accepted: int, draft_s_per_token: float,
                round_trip_s: float, width: int = 0, idle_draft_s_per_token: float = 0.0,
                verify_s: float = 0.0, timed_trip: bool = True) -> None:
        """Fold one round in; a full accept says nothing about rejection, a miss counts one.
        ``width``: tokens the daemon verified when not k + 1 (a tree of more nodes than its
        depth ``k``). ``draft_s_per_token``: drafting beside a verify (0: none this round);
        ``idle_draft_s_per_token``: drafting with nothing in flight (0: none); ``verify_s``:
        the daemon's own pass, as its VERDICT reports it (0: not reported); ``timed_trip``
        False: the round trip waited on another round (a chained draft), so it is not one."""
        decay = 1.0 - self.smoothing
        self.accepted = self.accepted * decay + accepted
        self.rejected = self.rejected * decay + (1.0 if accepted < k else 0.0)
        if k > 0:
            self.depth.observe(k, accepted)
        if not self.timed:
            return
        if k > 0 and draft_s_per_token > 0:
            self.draft_s_per_token += self.smoothing * (draft_s_per_token - self.draft_s_per_token)
        if idle_draft_s_per_token > 0:
            self.idle_draft_s_per_token = (
                idle_draft_s_per_token if not self.idle_draft_s_per_token else
                self.idle_draft_s_per_token
                + self.smoothing * (idle_draft_s_per_token - self.idle_draft_s_per_token))
        if timed_trip:
            self.round_trip.add(width or k + 1, round_trip_s, verify_s)
