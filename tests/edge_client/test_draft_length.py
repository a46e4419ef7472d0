from __future__ import annotations

import pytest
from edgespec.edge_client.draft_length import DraftLength, expected_tokens


def test_expected_tokens_limits():
    assert expected_tokens(1.0, 4) == 5
    assert expected_tokens(0.0, 4) == pytest.approx(1.0)
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_high_acceptance_drafts_long():
    policy = DraftLength(k_max=16, accepted=100, rejected=1)
    assert policy.next_k(1000) >= 12


def test_low_acceptance_drafts_short():
    policy = DraftLength(k_max=16, accepted=1, rejected=4)
    assert policy.next_k(1000) <= 3


def test_never_drafts_past_what_is_wanted():
    assert DraftLength(k_max=16).next_k(3) == 2
    assert DraftLength(k_max=16).next_k(1) == 0


def test_fixed_policy_ignores_estimates():
    policy = DraftLength(k_max=7, adaptive=False, accepted=0.1, rejected=50)
    assert policy.next_k(100) == 7


def test_rejections_lower_the_estimate():
    policy = DraftLength(k_max=8)
    before = policy.acceptance
    for _ in range(10):
        policy.observe(8, 0, 0.05, 0.08)
    assert policy.acceptance < before / 2


def test_round_trip_model_learns_a_line():
    from edgespec.edge_client.draft_length import RoundTripModel

    model = RoundTripModel()
    for _ in range(50):
        for width in (2, 5, 9):
            model.add(width, 0.05 + 0.01 * width)
    assert model.predict(4) == pytest.approx(0.09, rel=0.02)
    assert model.predict(17) == pytest.approx(0.22, rel=0.02)


def test_costly_wide_verification_shortens_drafts():
    cheap = DraftLength(k_max=16, accepted=7, rejected=3, draft_s_per_token=0.01)
    costly = DraftLength(k_max=16, accepted=7, rejected=3, draft_s_per_token=0.01)
    for _ in range(30):
        for width in (2, 6, 10):
            cheap.round_trip.add(width, 0.1)
            costly.round_trip.add(width, 0.05 + 0.02 * width)
    assert costly.next_k(100) < cheap.next_k(100)
