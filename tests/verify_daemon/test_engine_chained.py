"""Chained DRAFTs: sent while the session's previous draft is in flight, verified right after
it when its guess held, answered STALE_DRAFT unverified when not (scripted target)."""

from __future__ import annotations

import pytest
from edgespec.verify_daemon.engine import Engine, Reply
from edgespec.wire.codec import Close, Closed, Draft, Error, Message, Open, Opened, Verdict
from edgespec.wire.errors import ErrorCode, InvalidToken, OutOfSync, StaleDraft

from .scripted import (
    VOCAB,
    ScriptedRunner,
    make_engine,
    run_steps,
    serve,
    target_greedy,
    tokens,
)

PROMPT = [5, 6, 7, 8, 9]


def opened_engine() -> tuple[Engine, ScriptedRunner]:
    engine, runner = make_engine()
    assert serve(engine, b"p", 1, Open(tokens(*PROMPT), 40)) == Opened(5)
    return engine, runner


def by_seq(replies: list[Reply]) -> dict[int, Message]:
    return {seq: msg for _peer, _sid, seq, msg, _epoch in replies}


def test_a_chained_draft_whose_guess_holds_runs_right_after_and_stays_exact():
    engine, runner = opened_engine()
    right = target_greedy(PROMPT, 8)
    assert engine.submit(b"p", 1, 2, Draft(5, tokens(*right[:3]))) is None
    # chained on a full accept of those 3 and the target's own 4th token as the root
    chained = Draft(9, tokens(*right[4:7]), root=right[3])
    assert engine.submit(b"p", 1, 3, chained) is None
    assert engine.sessions[1].queued is not None
    replies = by_seq(run_steps(engine))
    first, second = replies[2], replies[3]
    assert isinstance(first, Verdict) and isinstance(second, Verdict)
    assert (first.accepted, first.next_token, first.new_length) == (3, right[3], 9)
    assert (second.accepted, second.next_token, second.new_length) == (3, right[7], 13)
    session = engine.sessions[1]
    assert session.tokens == PROMPT + right
    assert runner.cached_tokens(session.blocks, session.cached) == session.tokens[:-1]
    assert engine.stats()["chained"] == 1 and engine.stats()["stale_drafts"] == 0


@pytest.mark.parametrize("miss", ["rejected", "other root"])
def test_a_chained_draft_whose_guess_fails_is_stale_and_changes_nothing(miss: str):
    engine, runner = opened_engine()
    right = target_greedy(PROMPT, 8)
    first = list(right[:3])
    root = right[3]
    if miss == "rejected":
        first[1] = (first[1] + 1) % VOCAB
    else:
        root = (root + 1) % VOCAB
    engine.submit(b"p", 1, 2, Draft(5, tokens(*first)))
    engine.submit(b"p", 1, 3, Draft(9, tokens(*right[4:7]), root=root))
    replies = by_seq(run_steps(engine))
    assert isinstance(replies[2], Verdict)
    stale = replies[3]
    assert isinstance(stale, Error) and stale.code == ErrorCode.STALE_DRAFT
    session = engine.sessions[1]
    assert session.queued is None and session.pending is None
    verified = replies[2].new_length
    assert session.tokens == (PROMPT + right)[:verified]
    assert runner.cached_tokens(session.blocks, session.cached) == session.tokens[:-1]
    # the client goes on from the verdict it has, with a plain draft
    more = serve(engine, b"p", 1, Draft(verified, tokens(*(PROMPT + right)[verified:][:2])),
                 seq=4)
    assert isinstance(more, Verdict) and more.accepted == 2
    assert engine.stats()["stale_drafts"] == 1


def test_a_chained_draft_arriving_after_the_verdict_runs_or_is_stale_at_once():
    engine, _ = opened_engine()
    right = target_greedy(PROMPT, 8)
    serve(engine, b"p", 1, Draft(5, tokens(*right[:3])), seq=2)
    with pytest.raises(StaleDraft):  # the guessed root is not the target's token
        engine.submit(b"p", 1, 3, Draft(9, tokens(*right[4:6]), root=(right[3] + 1) % VOCAB))
    assert engine.sessions[1].pending is None
    late = serve(engine, b"p", 1, Draft(9, tokens(*right[4:6]), root=right[3]), seq=4)
    assert isinstance(late, Verdict) and late.accepted == 2


def test_chained_drafts_are_bounded_and_checked():
    engine, _ = opened_engine()
    right = target_greedy(PROMPT, 8)
    engine.submit(b"p", 1, 2, Draft(5, tokens(*right[:3])))
    with pytest.raises(OutOfSync, match="full accept"):  # not where a full accept ends
        engine.submit(b"p", 1, 3, Draft(8, tokens(1), root=right[3]))
    with pytest.raises(InvalidToken):
        engine.submit(b"p", 1, 3, Draft(9, tokens(1), root=VOCAB + 3))
    with pytest.raises(OutOfSync):  # a plain draft still may not overtake one in flight
        engine.submit(b"p", 1, 3, Draft(5, tokens(1)))
    assert engine.submit(b"p", 1, 3, Draft(9, tokens(1), root=right[3])) is None
    with pytest.raises(OutOfSync, match="only one"):  # one chained draft at a time
        engine.submit(b"p", 1, 4, Draft(9, tokens(2), root=right[3]))
    assert engine.sessions[1].queued is not None and engine.sessions[1].queued.seq == 3


def test_a_reopen_or_close_leaves_no_chained_draft_hanging():
    engine, _ = opened_engine()
    right = target_greedy(PROMPT, 8)
    engine.submit(b"p", 1, 2, Draft(5, tokens(*right[:3])))
    engine.submit(b"p", 1, 3, Draft(9, tokens(*right[4:6]), root=right[3]))
    assert engine.submit(b"p", 1, 4, Open(tokens(*PROMPT), 40)) == Opened(5)
    answered = by_seq(engine.superseded)
    assert {2, 3} <= set(answered)
    assert all(isinstance(m, Error) and m.code == ErrorCode.OUT_OF_SYNC
               for m in answered.values())
    assert engine.sessions[1].queued is None
    engine.submit(b"p", 1, 5, Draft(5, tokens(*right[:3])))
    engine.submit(b"p", 1, 6, Draft(9, tokens(*right[4:6]), root=right[3]))
    assert serve(engine, b"p", 1, Close(), seq=7) == Closed()
    assert run_steps(engine) == []  # nothing runs for a closed session
