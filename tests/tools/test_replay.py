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
