"""DRAFT with a sparse q: round trip, and every malformed q is a typed error."""

from __future__ import annotations

import numpy as np
import pytest
from edgespec.wire.codec import Draft, SparseQ, decode, encode
from edgespec.wire.errors import BadDistribution, InvalidToken, LimitExceeded, MalformedFrame


def arr(*xs: float, dtype: type = np.int32) -> np.ndarray:
    return np.array(xs, dtype=dtype)


def q(counts, ids, probs) -> SparseQ:
    return SparseQ(arr(*counts), arr(*ids), arr(*probs, dtype=np.float32))


def roundtrip(draft: Draft) -> Draft:
    msg = decode(encode(draft, 1, 2)).msg
    assert isinstance(msg, Draft)
    return msg


def test_sparse_q_round_trips():
    sent = Draft(7, arr(5, 9), q((2, 1), (5, 3, 9), (0.75, 0.25, 1.0)))
    got = roundtrip(sent)
    assert got.q is not None and got.tokens.tolist() == [5, 9]
    assert got.q.row(0)[0].tolist() == [5, 3] and got.q.row(1)[1].tolist() == [1.0]


def test_draft_without_q_is_one_hot():
    assert roundtrip(Draft(7, arr(5, 9))).q is None


@pytest.mark.parametrize("bad, error", [
    (q((2, 1), (5, 3, 9), (0.5, 0.25, 1.0)), BadDistribution),  # sums to 0.75
    (q((2, 1), (5, 5, 9), (0.5, 0.5, 1.0)), BadDistribution),  # duplicate id
    (q((2, 1), (4, 3, 9), (0.5, 0.5, 1.0)), BadDistribution),  # drafted 5 missing
    (q((2, 1), (5, 3, 9), (1.5, -0.5, 1.0)), BadDistribution),  # outside (0, 1]
    (q((2, 1), (5, 3, 9), (np.nan, 0.5, 1.0)), BadDistribution),
    (q((2, 1), (5, -3, 9), (0.5, 0.5, 1.0)), InvalidToken),  # negative id
    (q((3, 1), (5, 3, 9), (0.5, 0.5, 1.0)), MalformedFrame),  # sizes disagree
    (q((2,), (5, 3), (0.5, 0.5)), MalformedFrame),  # one support for two tokens
    (q((0, 3), (5, 3, 9), (0.5, 0.5, 1.0)), LimitExceeded),  # empty support
])
def test_bad_q_is_a_typed_error(bad, error):
    with pytest.raises(error):
        decode(encode(Draft(7, arr(5, 9), bad), 1, 2))


def test_truncated_probability_frame_is_malformed():
    frames = encode(Draft(7, arr(5), q((1,), (5,), (1.0,))), 1, 2)
    frames[-1] = frames[-1][:3]
    with pytest.raises(MalformedFrame):
        decode(frames)
