"""The VERDICT's budget: a session's share of one step, lower as more sessions draft."""

from __future__ import annotations

from edgespec.verify_daemon.draft_budget import ACTIVE_S, draft_budget, drafting_sessions
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
    assert drafting_sessions(sessions, now) == 2
    assert drafting_sessions([], now) == 1
