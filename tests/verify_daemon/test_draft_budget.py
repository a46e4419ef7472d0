"""The VERDICT's budget: a session's share of one step, lower as more sessions draft."""

from __future__ import annotations

from edgespec.verify_daemon.draft_budget import (
    ACTIVE_S,
    draft_budget,
    drafting_sessions,
    goodput_budgets,
)
from edgespec.verify_daemon.session import Session
from edgespec.wire.codec import SamplingParams


def test_budget_is_a_fair_share_of_the_step_clamped():
    assert draft_budget(256, 1, 64) == 64  # alone: the most a draft may hold
    assert draft_budget(256, 16, 64) == 15  # 16 × (15 + 1) = one step of 256
    assert draft_budget(256, 64, 64) == 3
    assert draft_budget(256, 1000, 64) == 1  # never 0: a round always drafts something
    assert draft_budget(2048, 64, 64) == 31  # a GPU step is wider


def _session(sid: int, tokens: int, cached: int, last_active: float) -> Session:
    s = Session(sid, b"peer", list(range(tokens)), SamplingParams(), 8, tokens, last_active)
    s.cached = cached
    return s


def test_only_open_recently_active_sessions_count():
    now = 100.0
    sessions = [_session(1, 10, 9, now),  # drafting
                _session(2, 10, 9, now - ACTIVE_S / 2),  # drafting
                _session(3, 10, 4, now),  # still prefilling
                _session(4, 10, 9, now - 2 * ACTIVE_S)]  # its client went quiet
    assert [s.sid for s in drafting_sessions(sessions, now)] == [1, 2]
    assert drafting_sessions([], now) == []


def test_goodput_budget_spends_tokens_where_they_pay():
    # c0 = 20 ms, c1 = 2 ms a token: a sure drafter gets long drafts, a poor one short ones
    budgets = goodput_budgets({1: 0.95, 2: 0.5, 3: 0.5}, 0.020, 0.002, 32)
    assert budgets[1] > 8 > budgets[2] == budgets[3] >= 1


def _goodput(k: dict[int, int], a: dict[int, float], c0: float, c1: float) -> float:
    tokens = sum(sum(a[i] ** j for j in range(n + 1)) for i, n in k.items())
    return tokens / (c0 + c1 * sum(n + 1 for n in k.values()))


def test_goodput_budget_is_the_optimum_of_its_formula():
    """Against every allocation of 0..6 tokens to two sessions (the brute force)."""
    a, c0, c1 = {1: 0.9, 2: 0.6}, 0.010, 0.003
    got = goodput_budgets(a, c0, c1, 6)
    best = max(({1: x, 2: y} for x in range(7) for y in range(7)),
               key=lambda k: _goodput(k, a, c0, c1))
    assert _goodput(got, a, c0, c1) >= _goodput(best, a, c0, c1) - 1e-12
    assert got == {i: max(1, n) for i, n in best.items()}


def test_goodput_budget_without_a_cost_model_or_sessions():
    assert goodput_budgets({1: 0.5}, 0.0, 0.0, 16) == {1: 16}  # no pass measured yet
    assert goodput_budgets({}, 0.01, 0.001, 16) == {}
    assert goodput_budgets({1: 0.0, 2: 0.0}, 0.01, 0.001, 16) == {1: 1, 2: 1}  # never 0
