from __future__ import annotations

from collections.abc import Callable

import pytest
from edgespec.edge_client.draft_length import (
    DraftLength,
    RoundTripModel,
    expected_tokens,
    round_seconds,
)


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


WIRE = 0.05


def staircase(width: int) -> float:
    """A CPU target's verify pass with verifyd's linear-layer plan: flat to 4 tokens, then
    a step (the AMD box: 70 ms, then 100 ms at 5)."""
    return 0.07 if width <= 4 else 0.10 + 0.01 * (width - 5)


def test_round_trip_model_keeps_a_staircase_and_moves_the_wire_alone():
    from edgespec.edge_client.draft_length import RoundTripModel

    model = RoundTripModel()
    for _ in range(20):
        for width in range(2, 9):
            model.add(width, WIRE + staircase(width), staircase(width))
    assert model.predict(4) == pytest.approx(0.12, rel=0.01)
    assert model.predict(5) == pytest.approx(0.15, rel=0.01)
    for _ in range(20):  # the network got 50 ms slower; only width 3 is drafted meanwhile
        model.add(3, 2 * WIRE + staircase(3), staircase(3))
    assert model.predict(6) == pytest.approx(2 * WIRE + staircase(6), rel=0.01)


def test_an_unseen_width_lies_between_its_measured_neighbours():
    from edgespec.edge_client.draft_length import RoundTripModel

    model = RoundTripModel()
    for _ in range(5):
        model.add(3, WIRE + 0.07, 0.07)
        model.add(6, WIRE + 0.071, 0.071)
    assert WIRE + 0.07 <= model.predict(4) <= WIRE + 0.071
    assert model.predict(2) <= model.predict(3)


def test_a_round_trip_without_the_daemons_time_counts_as_verification():
    from edgespec.edge_client.draft_length import RoundTripModel

    model = RoundTripModel()
    model.add(4, 0.2)
    assert model.wire == 0.0
    assert model.predict(4) == pytest.approx(0.2)


def _settle(policy: DraftLength, cost: Callable[[int], float], rounds: int) -> list[int]:
    """Run ``rounds`` rounds against a daemon whose pass costs ``cost(width)``."""
    chosen = []
    for _ in range(rounds):
        k = policy.next_k(1000)
        chosen.append(k)
        policy.round_trip.add(k + 1, WIRE + cost(k + 1), cost(k + 1))
    return chosen


def _best(policy: DraftLength, cost: Callable[[int], float]) -> int:
    from edgespec.edge_client.draft_length import round_seconds

    a = policy.acceptance
    return max(range(1, policy.k_max + 1), key=lambda k: expected_tokens(a, k) / round_seconds(
        k, a, policy.draft_s_per_token, WIRE + cost(k + 1), policy.pipelined))


@pytest.mark.parametrize("accepted,rejected", [(7, 3), (85, 15), (95, 5)])
@pytest.mark.parametrize("cost", [staircase, lambda w: 0.06 + 0.008 * w],
                         ids=["staircase", "line"])
def test_probing_finds_the_best_length_for_the_daemons_costs(
        accepted: float, rejected: float, cost: Callable[[int], float]):
    policy = DraftLength(k_max=16, accepted=accepted, rejected=rejected, pipelined=True)
    best = _best(policy, cost)
    chosen = _settle(policy, cost, 160)
    settled = chosen[-80:]
    assert settled.count(best) >= 0.8 * len(settled), (best, chosen)


def test_the_step_moves_the_choice_where_a_line_would_not():
    policy = DraftLength(k_max=16, accepted=85, rejected=15, pipelined=True)
    first = policy.next_k(1000)
    assert _best(policy, staircase) == 3 < first  # the prior line drafts past the step
    assert _settle(policy, staircase, 60)[-10:].count(3) >= 8


def test_an_untimed_policy_cuts_rounds_alike_whatever_the_timings():
    """A seeded sampled run must repeat: no timing, and so no probe, may move its k."""

    def lengths(timed: bool, slow: float) -> list[int]:
        policy = DraftLength(k_max=16, timed=timed, pipelined=True)
        chosen = []
        for i in range(40):
            k = policy.next_k(1000)
            chosen.append(k)
            policy.observe(k, k if i % 3 else k // 2, 0.01 * slow,
                           slow * (WIRE + staircase(k + 1)), verify_s=slow * staircase(k + 1))
        return chosen

    assert lengths(False, 1.0) == lengths(False, 10.0)
    assert lengths(True, 1.0) != lengths(True, 10.0)


def _runs_that_hold(first: float, later: float, k: int, rounds: int) -> list[int]:
    """Accepted counts of ``rounds`` drafts of ``k`` where position 1 holds with ``first``
    and every later one, given the ones before, with ``later`` (fixed seed)."""
    import random

    rng = random.Random(7)
    out = []
    for _ in range(rounds):
        m = 0
        while m < k and rng.random() < (first if m == 0 else later):
            m += 1
        out.append(m)
    return out


def test_depth_profile_learns_that_runs_hold_once_started():
    from edgespec.edge_client.draft_length import DepthProfile

    profile = DepthProfile()
    for m in _runs_that_hold(0.6, 0.95, 6, 200):
        profile.observe(6, m)
    assert profile.ratio(1) < 0.85 < 1.05 < profile.ratio(3)


def test_a_profile_that_holds_late_drafts_longer_and_predicts_what_it_gets():
    """Position 1 holds 60 % of the time, later ones 95 %: the geometric model (a flat
    profile) over-promises short drafts and under-drafts; the profile predicts E(5)."""
    from edgespec.edge_client.draft_length import DepthProfile

    shaped, flat = DraftLength(k_max=16, pipelined=True), DraftLength(k_max=16, pipelined=True)
    predicted: dict[str, list[float]] = {"shaped": [], "flat": []}
    for i, m in enumerate(_runs_that_hold(0.6, 0.95, 6, 300)):
        for name, policy in (("shaped", shaped), ("flat", flat)):
            policy.observe(6, m, 0.01, WIRE + 0.07, verify_s=0.07)
            if name == "flat":
                policy.depth = DepthProfile()
            if i >= 50:
                predicted[name].append(sum(policy.survival(5)))
    truth = sum(m + 1 for m in _runs_that_hold(0.6, 0.95, 5, 20000)) / 20000
    mean = {name: sum(v) / len(v) for name, v in predicted.items()}
    assert mean["shaped"] == pytest.approx(truth, rel=0.03)
    assert mean["flat"] > 1.08 * truth
    for policy in (shaped, flat):
        for width in range(1, 18):
            policy.round_trip.add(width, WIRE + 0.07, 0.07)  # a flat pass: k costs drafting
    assert shaped.acceptance == flat.acceptance
    assert shaped.next_k(1000) > flat.next_k(1000)


def test_each_choice_says_what_it_expects_the_round_to_yield():
    policy = DraftLength(k_max=16, accepted=7, rejected=3)
    k = policy.next_k(1000)
    assert policy.expected == pytest.approx(expected_tokens(0.7, k))
    assert DraftLength(k_max=16).next_k(1) == 0
    fixed = DraftLength(k_max=5, adaptive=False, accepted=7, rejected=3)
    assert fixed.next_k(100) == 5 and fixed.expected == pytest.approx(expected_tokens(0.7, 5))


def test_an_untimed_policy_ignores_what_other_sessions_measured():
    """A seeded run beside timed ones on one client: the shared round-trip model they
    fill must not move its k (the same rounds, the same tokens)."""
    shared = RoundTripModel()
    fresh = DraftLength(k_max=8, timed=False, round_trip=RoundTripModel())
    beside = DraftLength(k_max=8, timed=False, round_trip=shared)
    for width in range(1, 10):  # a steep staircase another session measured
        for _ in range(3):
            shared.add(width, 0.05 + (0.3 if width > 2 else 0.0), 0.0)
    for _ in range(20):
        assert beside.next_k(100) == fresh.next_k(100)
        for policy in (beside, fresh):
            policy.observe(policy.next_k(100), 2, 0.0, 0.0)


@pytest.mark.parametrize("a", [0.6, 0.7, 0.8, 0.9])
def test_chained_drafts_favour_shorter_rounds_that_hold_more_often(a: float):
    """A round that holds whole has sent the next draft ahead: the wire is saved on it, so
    the rate favours the shorter drafts that hold more often (a 100 ms wire, 50 ms pass)."""
    chosen = {}
    for chained in (False, True):
        trips = RoundTripModel()
        for width in range(1, 18):
            for _ in range(3):
                trips.add(width, 0.15 + 0.004 * width, 0.05 + 0.004 * width)
        policy = DraftLength(k_max=16, pipelined=True, chained=chained, round_trip=trips,
                             draft_s_per_token=0.008, accepted=100 * a, rejected=100 * (1 - a))
        chosen[chained] = policy.next_k(100)
        held = policy.survival(chosen[chained] + 1)
        trip = trips.predict(chosen[chained] + 1)
        assert chosen[chained] >= 1
        if chained:  # its hits cost the pass alone
            hit = held[chosen[chained] + 1]
            cost = round_seconds(chosen[chained], 0.0, 0.008, trip, True, hit=hit,
                                 saved=trips.wire)
            assert cost == pytest.approx(hit * (trip - trips.wire) + (1 - hit) * (
                chosen[chained] * 0.008 + 0.008 + trip))
    assert chosen[True] < chosen[False]


def test_a_chained_round_that_holds_waits_for_its_next_draft_to_be_made():
    """Saving the wire, a held round costs its pass, or the drafting of the next draft if
    that takes longer; drafting past the whole trip chains nothing (the verdict is back)."""
    trip, wire = 0.15, 0.10
    fast = round_seconds(3, 0.0, 0.01, trip, True, hit=1.0, saved=wire)  # 4 evals: 40 ms
    slow = round_seconds(7, 0.0, 0.012, trip, True, hit=1.0, saved=wire)  # 8 evals: 96 ms
    past = round_seconds(15, 0.0, 0.012, trip, True, hit=1.0, saved=wire)  # 192 ms
    assert fast == pytest.approx(trip - wire)
    assert slow == pytest.approx(0.096)
    assert past == pytest.approx(0.192) == round_seconds(15, 0.0, 0.012, trip, True, hit=1.0)
