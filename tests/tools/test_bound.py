"""The bound model, checked on cases whose answers are known by hand."""

from __future__ import annotations

import random

import pytest
from edgespec.edge_client.draft_length import expected_tokens
from edgespec.tools.bound import Parts, VerifyCost, best, best_batched, rate, round_cost

FLAT = VerifyCost.from_table({1: 0.05})  # a pass costs 50 ms at any width (a GPU, roughly)


def test_verify_cost_interpolates_and_extends_the_last_segment():
    v = VerifyCost.from_table({1: 0.010, 4: 0.016, 8: 0.020})
    assert v(1) == pytest.approx(0.010)
    assert v(2) == pytest.approx(0.012)
    assert v(6) == pytest.approx(0.018)
    assert v(16) == pytest.approx(0.028)  # extends 4 -> 8's slope of 1 ms a token


def test_verify_cost_needs_widths_from_one():
    with pytest.raises(ValueError):
        VerifyCost.from_table({})
    with pytest.raises(ValueError):
        VerifyCost.from_table({0: 0.01})


def test_no_acceptance_means_the_daemon_alone():
    parts = Parts(draft_s_per_token=0.01, verify=FLAT, round_trip_s=0.02)
    b = best(parts, 0.0, k_max=16)
    assert b.sequential_k == 0 and b.pipelined_k == 0
    assert b.sequential_tok_s == pytest.approx(1 / 0.07)


def test_full_acceptance_with_free_drafting_takes_the_longest_draft():
    parts = Parts(draft_s_per_token=0.0, verify=FLAT, round_trip_s=0.0)
    b = best(parts, 1.0, k_max=8)
    assert b.sequential_k == 8
    assert b.sequential_tok_s == pytest.approx(9 / 0.05)


def test_sequential_round_is_drafting_plus_trip_plus_verify():
    """k = 4 drafts and the target's own token: 5 draft evaluations a round."""
    parts = Parts(0.01, VerifyCost.from_table({1: 0.03, 5: 0.07}), round_trip_s=0.02)
    assert round_cost(parts, 0.5, 4, pipelined=False) == pytest.approx(0.05 + 0.02 + 0.07)
    expected = (1 - 0.5 ** 5) / 0.5
    assert rate(parts, 0.5, 4, pipelined=False) == pytest.approx(expected / 0.14)
    assert round_cost(parts, 0.5, 0, pipelined=False) == pytest.approx(0.02 + 0.03)


def test_pipelining_hides_drafting_and_the_wire_only_when_the_round_hits():
    """A hit's next draft was drafted and sent (chained) during the trip: the next pass
    follows this one directly, so the round costs its pass alone."""
    parts = Parts(0.01, FLAT, round_trip_s=0.05)
    a, k = 0.8, 4
    hit = a ** 5
    seq = round_cost(parts, a, k, pipelined=False)
    pipe = round_cost(parts, a, k, pipelined=True)
    assert pipe == pytest.approx(hit * 0.05 + (1 - hit) * 0.15)
    assert pipe < seq


def test_idle_cores_speed_the_drafting_no_verify_overlaps():
    """t_i: a fresh draft after a miss, and what the look-ahead did not reach, run on the
    daemon's cores too; what drafting overlaps the trip stays at t_d."""
    parts = Parts(0.02, FLAT, round_trip_s=0.0, draft_idle_s_per_token=0.01)
    a, k = 0.8, 4  # 5 evaluations: 0.10 > the 0.05 trip: 0.05 of it after, at half cost
    hit = a ** 5
    assert round_cost(parts, a, k, pipelined=False) == pytest.approx(0.05 + 0.05)
    assert round_cost(parts, a, k, pipelined=True) == pytest.approx(
        hit * (0.05 + 0.025) + (1 - hit) * (0.05 + 0.05))
    same = Parts(0.02, FLAT, round_trip_s=0.0)
    assert round_cost(same, a, k, pipelined=True) == pytest.approx(
        hit * 0.10 + (1 - hit) * (0.10 + 0.05))
    assert best(parts, a, 16).pipelined_tok_s > best(same, a, 16).pipelined_tok_s


def test_pipelined_bound_is_never_below_sequential():
    rng = random.Random(7)
    for _ in range(200):
        table = {1: rng.uniform(0.005, 0.1)}
        table[16] = table[1] + rng.uniform(0.0, 0.2)
        t_d = rng.uniform(0.001, 0.05)
        parts = Parts(t_d, VerifyCost.from_table(table), rng.uniform(0.0, 0.2),
                      draft_idle_s_per_token=rng.choice([0.0, t_d * rng.uniform(0.3, 1.0)]))
        b = best(parts, rng.uniform(0.0, 1.0), k_max=16)
        assert b.pipelined_tok_s >= b.sequential_tok_s - 1e-9


def test_higher_round_trip_favours_longer_drafts():
    near = Parts(0.01, VerifyCost.from_table({1: 0.02, 17: 0.1}), round_trip_s=0.0)
    far = Parts(0.01, VerifyCost.from_table({1: 0.02, 17: 0.1}), round_trip_s=0.1)
    assert best(far, 0.8, 16).sequential_k > best(near, 0.8, 16).sequential_k
    assert best(far, 0.8, 16).sequential_tok_s < best(near, 0.8, 16).sequential_tok_s


def test_no_mixed_schedule_beats_the_best_constant_k():
    """Renewal reward: mixing draft lengths averages their ratios (the docstring's claim)."""
    parts = Parts(0.012, VerifyCost.from_table({1: 0.03, 8: 0.06, 16: 0.1}), 0.04)
    a = 0.75
    top = best(parts, a, 16).sequential_tok_s
    rng = random.Random(1)
    for _ in range(100):
        ks = [rng.randrange(17) for _ in range(5)]
        weights = [rng.random() for _ in ks]
        tokens = sum(w * expected_tokens(a, k) for w, k in zip(weights, ks, strict=True))
        cost = sum(w * round_cost(parts, a, k, False) for w, k in zip(weights, ks, strict=True))
        assert tokens / cost <= top + 1e-9


def test_acceptance_outside_unit_interval_is_refused():
    with pytest.raises(ValueError):
        best(Parts(0.01, FLAT, 0.0), 1.5, 4)


def test_batched_bound_at_k0_is_one_step_per_token_per_batch():
    v = VerifyCost.from_table({1: 0.05, 16: 0.08, 256: 0.5})
    tok_s, k = best_batched(v, 0.0, sessions=16, tokens=1600, prompt_tokens=256, k_max=8)
    assert k == 0
    assert tok_s == pytest.approx(1600 / (0.5 + 100 * 0.08))


def test_batching_drafts_pays_when_passes_are_cheap_per_token():
    flat = VerifyCost.from_table({1: 0.05, 4096: 0.06})  # a GPU: width nearly free
    steep = VerifyCost.from_table({1: 0.05, 2: 0.1})  # every token costs a full pass
    assert best_batched(flat, 0.8, 16, 1600, 256, 16)[1] > 0
    assert best_batched(steep, 0.8, 16, 1600, 256, 16)[1] == 0


def test_prefill_of_many_prompts_is_charged_at_the_cheapest_width_not_as_one_sequence():
    v = VerifyCost.from_table({1: 0.05, 256: 0.5, 1088: 2.8})  # 1.95 / 2.57 ms a token
    assert v.fill(0) == 0.0
    assert v.fill(1) == pytest.approx(0.05)
    assert v.fill(100) == pytest.approx(min(v(100), 100 * 0.5 / 256))
    assert v.fill(3840) == pytest.approx(3840 * 0.5 / 256)  # not V(3840), far beyond
    assert v.fill(3840) < v(3840)
    tok_s, _ = best_batched(v, 0.0, sessions=64, tokens=3000, prompt_tokens=3840, k_max=0)
    assert tok_s == pytest.approx(3000 / (3840 * 0.5 / 256 + 3000 / 64 * v(64)))
