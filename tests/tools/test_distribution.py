"""The statistics behind the sampling test, checked on laws whose answers are known."""

from __future__ import annotations

from collections import Counter

import pytest
from edgespec.tools.distribution import chi_square, hardest_error, simulated_power

LAW = {(1, 1): 0.5, (1, 2): 0.3, (2, 1): 0.15, (2, -1): 0.05}


def test_counts_equal_to_expectation_fit_perfectly():
    counts = Counter({cell: int(p * 1000) for cell, p in LAW.items()})
    result = chi_square(counts, LAW, 1000)
    assert result.statistic == pytest.approx(0.0)
    assert result.df == 3
    assert result.p_value == pytest.approx(1.0)


def test_p_value_is_the_chi_square_tail():
    counts = Counter({(1, 1): 550, (1, 2): 270, (2, 1): 140, (2, -1): 40})
    result = chi_square(counts, LAW, 1000)
    # 5 + 3 + 0.6667 + 2 = 10.6667 on 3 df; the tail from tables is 0.01368
    assert result.statistic == pytest.approx(10.6667, abs=1e-3)
    assert result.p_value == pytest.approx(0.01368, abs=2e-4)


def test_rare_cells_are_pooled():
    law = {(1, 1): 0.992, (1, 2): 0.004, (1, 3): 0.004}
    result = chi_square(Counter({(1, 1): 992, (1, 2): 3, (1, 3): 5}), law, 1000)
    assert result.statistic == pytest.approx(0.0)
    assert result.df == 1  # (1,2) and (1,3) each expect < 5 draws: one pooled cell


def test_hardest_error_moves_two_points_between_the_likeliest_cells():
    shifted = hardest_error(LAW)
    assert shifted[(1, 1)] == pytest.approx(0.48)
    assert shifted[(1, 2)] == pytest.approx(0.32)
    assert sum(abs(shifted[c] - LAW[c]) for c in LAW) == pytest.approx(0.04)  # TV 0.02


def test_power_grows_with_the_number_of_draws():
    small = simulated_power(LAW, 500, reps=300)
    large = simulated_power(LAW, 20000, reps=300)
    assert small < 0.5 < 0.95 < large
