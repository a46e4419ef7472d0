from __future__ import annotations

import pytest
from edgespec.verify_daemon.verify import greedy_accept


def test_all_accepted_adds_bonus():
    assert greedy_accept([1, 2, 3], [1, 2, 3, 9]) == (3, 9)


def test_early_mismatch_returns_correction():
    assert greedy_accept([1, 2, 3], [5, 2, 3, 9]) == (0, 5)


def test_mismatch_in_middle():
    assert greedy_accept([1, 2, 3], [1, 7, 3, 9]) == (1, 7)


def test_empty_draft_yields_one_target_token():
    assert greedy_accept([], [4]) == (0, 4)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        greedy_accept([1, 2], [1, 2])
