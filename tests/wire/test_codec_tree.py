"""Token trees on the wire: DRAFT with parents, VERDICT with a path and a budget.

Round trips keep every field; each malformed tree or path is a typed error that ``decode``
turns into the ERROR code the daemon would send back.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from edgespec.wire.codec import (
    DEFAULT_LIMITS,
    Draft,
    SparseQ,
    Verdict,
    chain_parents,
    check_path,
    check_tree,
    decode,
    encode,
)
from edgespec.wire.errors import ErrorCode, LimitExceeded, MalformedFrame, WireError
from edgespec.wire.protocol import VERSION, Limits

# A small tree: 0 and 1 hang off the root, 2 continues 0, 3 and 4 continue 2.
TREE = (-1, -1, 0, 2, 2)
TOKENS = (11, 12, 13, 14, 15)


def arr(*xs: float, dtype: type = np.int32) -> np.ndarray:
    return np.array(xs, dtype=dtype)


def one_hot_q(tokens: tuple[int, ...]) -> SparseQ:
    n = len(tokens)
    return SparseQ(np.ones(n, np.int32), arr(*tokens), np.ones(n, np.float32))


def roundtrip(msg: Draft | Verdict) -> Draft | Verdict:
    return decode(encode(msg, 3, 4)).msg


def code_of(frames: list[bytes], limits: Limits = DEFAULT_LIMITS) -> ErrorCode:
    """The ERROR code a daemon would answer ``frames`` with (the server maps exc.code)."""
    with pytest.raises(WireError) as info:
        decode(frames, limits)
    return info.value.code


def test_version_is_5():
    assert VERSION == 5


# ---------------------------------------------------------------- DRAFT round trips


def test_tree_round_trips_in_three_body_frames():
    sent = Draft(9, arr(*TOKENS), parents=arr(*TREE))
    frames = encode(sent)
    assert len(frames) == 1 + 3
    got = roundtrip(sent)
    assert isinstance(got, Draft) and got.is_tree and got.q is None
    assert got.base_length == 9 and got.tokens.tolist() == list(TOKENS)
    assert got.parents is not None and got.parents.tolist() == list(TREE)
    assert got.depths().tolist() == [1, 1, 2, 3, 3]
    assert got.node_parents().tolist() == list(TREE)


def test_tree_with_q_round_trips_in_six_body_frames():
    q = SparseQ(arr(2, 1, 1, 1, 1), arr(11, 20, 12, 13, 14, 15),
                arr(0.5, 0.5, 1, 1, 1, 1, dtype=np.float32))
    sent = Draft(9, arr(*TOKENS), q, arr(*TREE))
    assert len(encode(sent)) == 1 + 6
    got = roundtrip(sent)
    assert isinstance(got, Draft) and got.q is not None and got.parents is not None
    assert got.parents.tolist() == list(TREE)
    assert got.q.row(0)[0].tolist() == [11, 20] and got.q.row(4)[0].tolist() == [15]


def test_chain_stays_compact():
    plain = Draft(9, arr(5, 6, 7))
    assert len(encode(plain)) == 1 + 2
    with_q = Draft(9, arr(5, 6, 7), one_hot_q((5, 6, 7)))
    assert len(encode(with_q)) == 1 + 5
    for sent in (plain, with_q):
        got = roundtrip(sent)
        assert isinstance(got, Draft) and not got.is_tree and got.parents is None
        assert got.depths().tolist() == [1, 2, 3]
        assert got.node_parents().tolist() == [-1, 0, 1]


def test_chain_may_also_travel_as_a_tree():
    got = roundtrip(Draft(1, arr(5, 6, 7), parents=chain_parents(3)))
    assert isinstance(got, Draft) and got.is_tree
    assert got.parents is not None and got.parents.tolist() == [-1, 0, 1]


def test_empty_tree_round_trips():
    got = roundtrip(Draft(1, arr(), parents=arr()))
    assert isinstance(got, Draft) and got.is_tree and got.tokens.tolist() == []


def test_positional_draft_construction_still_works():
    d = Draft(4, arr(1), None)
    assert d.parents is None and not d.is_tree


# ---------------------------------------------------------------- malformed trees


def tree_frames(parents: bytes, tokens: tuple[int, ...] = TOKENS) -> list[bytes]:
    frames = encode(Draft(9, arr(*tokens), parents=arr(*([-1] * len(tokens)))))
    frames[-1] = parents
    return frames


def i32(*xs: int) -> bytes:
    return np.array(xs, dtype="<i4").tobytes()


@pytest.mark.parametrize("parents, error, match", [
    (i32(-1, 3, 0, 2, 2), MalformedFrame, "node 1's parent 3 does not precede it"),
    (i32(-1, -1, 2, 2, 2), MalformedFrame, "node 2's parent 2 does not precede it"),  # self
    (i32(-1, -2, 0, 2, 2), MalformedFrame, "node 1's parent -2"),  # below the root
    (i32(0, -1, 0, 2, 2), MalformedFrame, "node 0's parent 0"),  # the first node's parent
    (i32(-1, -1, 0, 2), MalformedFrame, "4 parents for 5 nodes"),  # too short
    (i32(-1, -1, 0, 2, 2, 4), MalformedFrame, "6 parents for 5 nodes"),  # too long
    (i32(-1, -1, 0, 2, 2)[:-1], MalformedFrame, "whole number"),  # not whole int32
    (i32(-1, -1, 0, 2, 2) + b"\0", MalformedFrame, "whole number"),
])
def test_bad_parents_are_typed_errors(parents, error, match):
    with pytest.raises(error, match=match):
        decode(tree_frames(parents))
    assert code_of(tree_frames(parents)) == error.code


def test_parent_after_its_child_message():
    with pytest.raises(MalformedFrame, match="node 5's parent 7 does not precede it"):
        check_tree(arr(-1, 0, 1, 2, 3, 7, 4, 5), 32)


def test_depth_limit():
    deep = chain_parents(5)
    assert check_tree(deep, 5).tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(LimitExceeded, match="depth 5 exceeds the limit of 4"):
        check_tree(deep, 4)
    frames = encode(Draft(0, arr(1, 2, 3, 4, 5), parents=deep))
    assert code_of(frames, Limits(max_tree_depth=4)) == ErrorCode.LIMIT_EXCEEDED
    assert isinstance(decode(frames, Limits(max_tree_depth=5)).msg, Draft)


def test_default_depth_limit_refuses_a_33_deep_tree_but_not_a_compact_chain():
    tokens = np.arange(1, 34, dtype=np.int32)
    assert code_of(encode(Draft(0, tokens, parents=chain_parents(33)))) == (
        ErrorCode.LIMIT_EXCEEDED)
    assert isinstance(decode(encode(Draft(0, tokens))).msg, Draft)  # chains: max_draft only


def test_wide_tree_is_bounded_by_max_draft_tokens():
    wide = Draft(0, np.ones(65, np.int32), parents=np.full(65, -1, np.int32))
    assert code_of(encode(wide)) == ErrorCode.LIMIT_EXCEEDED
    ok = Draft(0, np.ones(64, np.int32), parents=np.full(64, -1, np.int32))
    got = decode(encode(ok)).msg
    assert isinstance(got, Draft) and got.depths().max() == 1


@pytest.mark.parametrize("counts, ids, probs", [
    ((1, 1, 1, 1), (11, 12, 13, 14), (1, 1, 1, 1)),  # a row short
    ((1, 1, 1, 1, 1, 1), (11, 12, 13, 14, 15, 16), (1, 1, 1, 1, 1, 1)),  # a row too many
])
def test_q_rows_must_match_the_nodes(counts, ids, probs):
    q = SparseQ(arr(*counts), arr(*ids), arr(*probs, dtype=np.float32))
    frames = encode(Draft(9, arr(*TOKENS), q, arr(*TREE)))
    with pytest.raises(MalformedFrame, match="supports for 5 tokens"):
        decode(frames)
    assert code_of(frames) == ErrorCode.MALFORMED


def test_bad_parents_in_a_tree_with_q():
    frames = encode(Draft(9, arr(*TOKENS), one_hot_q(TOKENS), arr(*TREE)))
    frames[-1] = i32(-1, -1, 4, 2, 2)
    with pytest.raises(MalformedFrame, match="node 2's parent 4"):
        decode(frames)


def test_four_body_frames_is_malformed():
    frames = encode(Draft(9, arr(*TOKENS), one_hot_q(TOKENS), arr(*TREE)))
    with pytest.raises(MalformedFrame, match="2, 3, 5 or 6"):
        decode(frames[:5])


# ---------------------------------------------------------------- VERDICT


def test_verdict_without_path_or_budget_is_one_frame():
    v = Verdict(2, 77, 13, 1500)
    assert len(encode(v)) == 1 + 1
    assert roundtrip(v) == v and v.path == () and v.budget == 0


def test_verdict_with_budget_and_path_round_trips():
    v = Verdict(3, 77, 13, 1500, (0, 2, 4), 24)
    assert len(encode(v)) == 1 + 2
    assert roundtrip(v) == v
    assert roundtrip(Verdict(0, 5, 6, 0, (), 64)) == Verdict(0, 5, 6, 0, budget=64)


def test_verdict_empty_path_frame_reads_as_no_path():
    frames = encode(Verdict(0, 5, 6))
    got = decode([*frames, b""]).msg
    assert isinstance(got, Verdict) and got.path == ()


def verdict_frames(accepted: int, path: bytes, budget: int = 0) -> list[bytes]:
    frames = encode(Verdict(accepted, 5, 6, 0, budget=budget))
    return [*frames, path]


@pytest.mark.parametrize("accepted, path, match", [
    (2, i32(0, 2, 3), "3 nodes for 2 accepted"),  # longer than accepted
    (3, i32(0, 2), "2 nodes for 3 accepted"),  # shorter
    (0, i32(0), "1 nodes for 0 accepted"),
    (3, i32(0, 2, 2), "strictly increase"),  # repeats
    (3, i32(0, 3, 2), "strictly increase"),  # goes back up
    (2, i32(-1, 2), "outside"),
    (2, i32(0, 64), "outside"),
    (2, i32(0, 2)[:-2], "whole number"),
])
def test_bad_verdict_path_is_malformed(accepted, path, match):
    frames = verdict_frames(accepted, path)
    with pytest.raises(MalformedFrame, match=match):
        decode(frames)
    assert code_of(frames) == ErrorCode.MALFORMED


def test_budget_beyond_max_draft_is_malformed():
    frames = encode(Verdict(0, 5, 6, budget=65))
    with pytest.raises(MalformedFrame, match="budget 65"):
        decode(frames)
    assert isinstance(decode(frames, Limits(max_draft_tokens=65)).msg, Verdict)


def test_old_four_field_verdict_struct_is_malformed():
    frames = encode(Verdict(0, 5, 6))
    frames[1] = struct.pack("<HiII", 0, 5, 6, 0)
    with pytest.raises(MalformedFrame, match="expected 16 bytes"):
        decode(frames)


def test_three_verdict_body_frames_is_malformed():
    frames = encode(Verdict(2, 5, 6, 0, (0, 1)))
    with pytest.raises(MalformedFrame, match="1 or 2"):
        decode([*frames, i32(1)])


# ---------------------------------------------------------------- check_path


def test_check_path_walks_the_tree_from_the_root():
    parents = arr(*TREE)
    for good in ((), (0,), (1,), (0, 2), (0, 2, 3), (0, 2, 4)):
        check_path(parents, good)
    check_path(None, ())
    for bad in ((2,), (0, 1), (1, 2), (0, 2, 3, 4), (0, 5)):
        with pytest.raises(MalformedFrame):
            check_path(parents, bad)
    with pytest.raises(MalformedFrame, match="not a tree"):
        check_path(None, (0,))


# ---------------------------------------------------------------- chained DRAFTs


@pytest.mark.parametrize("q", [None, one_hot_q((11, 12, 13))])
def test_chained_draft_round_trips_with_its_root(q: SparseQ | None):
    sent = Draft(9, arr(11, 12, 13), q, root=77)
    frames = encode(sent)
    assert len(frames[1]) == 8  # base and root
    got = roundtrip(sent)
    assert isinstance(got, Draft) and got.chained and got.root == 77
    assert got.base_length == 9 and got.tokens.tolist() == [11, 12, 13]
    assert (got.q is None) == (q is None)
    plain = roundtrip(Draft(9, arr(11)))
    assert isinstance(plain, Draft) and not plain.chained and len(encode(Draft(9, arr(11)))[1]) == 4


def test_malformed_chained_drafts_are_typed_errors():
    tree = encode(Draft(9, arr(*TOKENS), parents=arr(*TREE)))
    chained_tree = [tree[0], struct.pack("<II", 9, 5), *tree[2:]]
    assert code_of(chained_tree) == ErrorCode.MALFORMED  # a chained draft is a chain
    chain = encode(Draft(9, arr(11, 12)))
    assert code_of([chain[0], struct.pack("<II", 9, 2**31), *chain[2:]]) == ErrorCode.MALFORMED
    assert code_of([chain[0], struct.pack("<IH", 9, 5), *chain[2:]]) == ErrorCode.MALFORMED
