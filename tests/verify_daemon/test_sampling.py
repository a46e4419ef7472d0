"""Speculative sampling is exact: enumerate small vocabularies and compare with p to 1e-9.

The enumeration walks every branch of one verification step (accept all, reject at the
first position, and every position between), using the very functions ``decide`` draws
with, then completes the sequence from the true p (which is what the next round does).
If the step is exact, every completed sequence has exactly the target's probability.
A seeded Monte Carlo run of ``decide`` itself then checks it draws by those branch weights.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from edgespec.verify_daemon.sampling import (
    position_draws,
    sample_index,
    target_probs,
)
from edgespec.verify_daemon.verify import (
    accept_probability,
    decide,
    q_row,
    residual,
)
from edgespec.wire.codec import SamplingParams, SparseQ
from edgespec.wire.protocol import VerifyMode

V = 5


class Model:
    """Context-dependent random p (full support) and sparse q (2-3 ids), memoised by prefix."""

    def __init__(self, seed: int, one_hot_q: bool = False):
        self.rng = random.Random(seed)
        self.one_hot = one_hot_q
        self._p: dict[tuple[int, ...], torch.Tensor] = {}
        self._q: dict[tuple[int, ...], dict[int, float]] = {}

    def p(self, prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix not in self._p:
            w = torch.tensor([self.rng.random() ** 2 + 1e-3 for _ in range(V)],
                             dtype=torch.float64)
            self._p[prefix] = w / w.sum()
        return self._p[prefix]

    def q(self, prefix: tuple[int, ...]) -> dict[int, float]:
        if prefix not in self._q:
            ids = self.rng.sample(range(V), 1 if self.one_hot else self.rng.choice((2, 3)))
            w = [self.rng.random() + 0.05 for _ in ids]
            self._q[prefix] = {i: x / sum(w) for i, x in zip(ids, w, strict=True)}
        return self._q[prefix]

    def q_tensors(self, prefix: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.q(prefix)
        return torch.tensor(list(q)), torch.tensor(list(q.values()), dtype=torch.float64)

    def target(self, seq: tuple[int, ...]) -> float:
        return math.prod(float(self.p(seq[:i])[t]) for i, t in enumerate(seq))


def step_distribution(model: Model, k: int
                      ) -> tuple[dict[tuple[int, ...], float], dict[int, float]]:
    """Exact law of the (k + 1)-token sequence: one verification step, completed from p.

    Also returns the total probability of each ``accepted`` count, to show every branch
    (accept all, reject at the first position, every one between) carries weight.
    """
    law: dict[tuple[int, ...], float] = {}
    branches: dict[int, float] = defaultdict(float)

    def complete(prefix: tuple[int, ...], weight: float) -> None:
        if len(prefix) == k + 1:
            law[prefix] = law.get(prefix, 0.0) + weight
            return
        for t in range(V):
            complete((*prefix, t), weight * float(model.p(prefix)[t]))

    def walk(prefix: tuple[int, ...], weight: float) -> None:
        if len(prefix) == k:  # every draft token accepted: the bonus comes from p
            branches[k] += weight
            complete(prefix, weight)
            return
        q_ids, q_probs = model.q_tensors(prefix)
        p = model.p(prefix)
        for x, qx in model.q(prefix).items():
            alpha = accept_probability(p, q_ids, q_probs, x)
            walk((*prefix, x), weight * qx * alpha)
            r = residual(p, q_ids, q_probs)
            rejected = weight * qx * (1.0 - alpha)
            branches[len(prefix)] += rejected
            for y in range(V):
                complete((*prefix, y), rejected * float(r[y] / r.sum()))

    walk((), 1.0)
    return law, branches


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("one_hot", [False, True], ids=["sparse_q", "one_hot_q"])
def test_every_completed_sequence_has_the_target_probability(k, seed, one_hot):
    model = Model(seed, one_hot_q=one_hot)
    law, branches = step_distribution(model, k)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-12)
    for seq in itertools.product(range(V), repeat=k + 1):
        assert abs(law.get(seq, 0.0) - model.target(seq)) < 1e-9, seq
    assert set(branches) == set(range(k + 1))  # every branch was enumerated...
    assert all(w > 1e-6 for w in branches.values())  # ...and carries weight


def test_first_token_marginal_is_p_for_many_random_pairs():
    for seed in range(200):
        model = Model(seed)
        law, _ = step_distribution(model, 1)
        first = [sum(w for s, w in law.items() if s[0] == t) for t in range(V)]
        assert np.allclose(first, model.p(()).numpy(), atol=1e-12, rtol=0)


def test_residual_excludes_the_one_hot_token():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    r = residual(p, torch.tensor([0]), torch.ones(1, dtype=torch.float64))
    assert r.tolist() == [0.0, 0.3, 0.2]
    assert accept_probability(p, torch.tensor([0]), torch.ones(1, dtype=torch.float64), 0) == 0.5


def test_residual_of_identical_distributions_falls_back_to_p():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert torch.equal(residual(p, torch.tensor([0, 1]), p.clone()), p)


def test_sample_index_never_picks_zero_mass():
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75, 0.0], dtype=torch.float64)
    picks = {sample_index(probs, u) for u in np.linspace(0, 1 - 1e-12, 101)}
    assert picks == {1, 3}
    assert sample_index(probs, 0.2499999) == 3 - 2 and sample_index(probs, 0.9999999) == 3


# ---------------------------------------------------------------- decide() itself


def _exact_outcomes(p_rows: torch.Tensor, draft: list[int], q: SparseQ | None
                    ) -> dict[tuple[int, int], float]:
    """P(accepted, next_token) for fixed draft tokens, from the branch formulas."""
    out: dict[tuple[int, int], float] = {}
    reach = 1.0
    for i, x in enumerate(draft):
        q_ids, q_probs = q_row(q, i, x)
        alpha = accept_probability(p_rows[i], q_ids, q_probs, x)
        r = residual(p_rows[i], q_ids, q_probs)
        for y in range(V):
            out[(i, y)] = reach * (1 - alpha) * float(r[y] / r.sum())
        reach *= alpha
    for y in range(V):
        out[(len(draft), y)] = reach * float(p_rows[len(draft)][y])
    return out


@pytest.fixture
def one_thread():
    """Tiny tensors: torch's thread pool only adds synchronisation (badly, on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse_q", "one_hot_q"])
def test_decide_draws_by_the_branch_weights(sparse, one_thread):
    gen = torch.Generator()
    rng = random.Random(7)
    draft = [1, 3]
    logits = torch.log(torch.tensor([[rng.random() + 0.05 for _ in range(V)] for _ in range(3)]))
    params = SamplingParams(temperature=1.0, seed=12345)
    p_rows = target_probs(logits, params)
    q = None
    if sparse:
        q = SparseQ(np.array([2, 3], dtype=np.int32), np.array([1, 0, 3, 4, 2], dtype=np.int32),
                    np.array([0.7, 0.3, 0.5, 0.25, 0.25], dtype=np.float32))
    want = _exact_outcomes(p_rows, draft, q)
    n = 8_000
    got = Counter(decide(params, gen, pos, draft, q, logits) for pos in range(n))
    stat = sum((got[c] - n * w) ** 2 / (n * w) for c, w in want.items() if w > 0)
    assert set(got) <= {c for c, w in want.items() if w > 0}
    df = sum(w > 0 for w in want.values()) - 1
    assert stat < df + 6 * math.sqrt(2 * df)  # far beyond chance (about 4 sigma) fails


def test_same_seed_and_position_give_the_same_draws_in_any_order():
    gen = torch.Generator()
    a = [position_draws(gen, 99, n) for n in (5, 6, 7)]
    b = [position_draws(gen, 99, n) for n in (7, 5, 6)]
    assert a == [b[1], b[2], b[0]]
    assert position_draws(gen, 98, 5) != a[0]


def test_temperature_zero_is_argmax_matching():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    params = SamplingParams(temperature=0.0, seed=1)
    assert decide(params, torch.Generator(), 0, [1, 0], None, logits) == (2, 2)
    assert decide(params, torch.Generator(), 0, [2, 0], None, logits) == (0, 1)


def test_threshold_accepts_what_exact_would_reject(one_thread):
    logits = torch.log(torch.tensor([[0.6, 0.4], [0.5, 0.5]]))
    exact = SamplingParams(temperature=1.0, seed=3)
    lossy = SamplingParams(temperature=1.0, seed=3, verify=VerifyMode.THRESHOLD, threshold=0.3)
    one_hot_rejects = sum(decide(exact, torch.Generator(), n, [1], None, logits)[0] == 0
                          for n in range(200))
    assert one_hot_rejects > 50  # p(1) = 0.4 against a one-hot q: rejected 60 % of the time
    assert all(decide(lossy, torch.Generator(), n, [1], None, logits)[0] == 1
               for n in range(200))


def test_lossy_strategies_are_named_lossy():
    assert not SamplingParams(temperature=0.7).lossy
    assert not SamplingParams(temperature=0.0, verify=VerifyMode.GREEDY).lossy
    assert SamplingParams(temperature=0.7, verify=VerifyMode.GREEDY).lossy
    assert SamplingParams(temperature=0.7, verify=VerifyMode.THRESHOLD,
                          threshold=0.2).strategy == "threshold 0.2 (lossy)"
    assert SamplingParams(temperature=0.7).strategy == "exact"
