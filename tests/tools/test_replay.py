"""Replay's trace transforms, without a daemon."""

from __future__ import annotations

from edgespec.tools.replay import as_target_only


def test_target_only_turns_each_verified_token_into_an_empty_round():
    records = [
        {"kind": "open", "session": "a", "t": 0.0, "tokens": [1, 2], "max_new_tokens": 8},
        {"kind": "round", "session": "a", "t": 1.0, "base_length": 2, "draft": [3, 4, 9],
         "accepted": 2, "next_token": 5},
        {"kind": "round", "session": "a", "t": 2.0, "base_length": 5, "draft": [],
         "accepted": 0, "next_token": 6},
    ]
    out = as_target_only(records)
    assert out[0] == records[0]
    rounds = [(r["base_length"], r["draft"], r["accepted"], r["next_token"]) for r in out[1:]]
    assert rounds == [(2, [], 0, 3), (3, [], 0, 4), (4, [], 0, 5), (5, [], 0, 6)]


def test_target_only_of_a_sampled_session_is_unchecked_and_drops_q():
    records = [
        {"kind": "open", "session": "a", "t": 0.0, "tokens": [1], "max_new_tokens": 8,
         "sampling": {"temperature": 0.8, "top_k": 0, "top_p": 0.9, "seed": 3, "verify": 0,
                      "threshold": 0.0}},
        {"kind": "round", "session": "a", "t": 1.0, "base_length": 1, "draft": [3],
         "accepted": 1, "next_token": 5,
         "q": {"counts": [2], "ids": [3, 4], "probs": [0.75, 0.25]}},
    ]
    out = as_target_only(records)
    assert [r["unchecked"] for r in out[1:]] == [True, True]
    assert all("q" not in r for r in out[1:])
