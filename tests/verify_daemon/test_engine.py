"""Engine bookkeeping with a scripted target that reads its context through the KV blocks."""

from __future__ import annotations

import pytest
from edgespec.wire.codec import Close, Closed, Draft, Error, Hello, Open, Opened, Verdict, Welcome
from edgespec.wire.errors import (
    AuthFailed,
    ErrorCode,
    InvalidToken,
    LimitExceeded,
    ModelMismatch,
    OutOfSync,
    Overloaded,
    UnknownSession,
)

from .scripted import (
    FP,
    VOCAB,
    make_engine,
    run_steps,
    serve,
    target_greedy,
    target_next,
    tokens,
)


def test_hello_checks_the_fingerprint():
    engine, _ = make_engine()
    assert isinstance(engine.hello(Hello(FP)), Welcome)
    with pytest.raises(ModelMismatch):
        engine.hello(Hello(b"x" * 32))


def test_round_accepts_prefix_and_rolls_back_the_rest():
    engine, runner = make_engine()
    prompt = [5, 6, 7, 8, 9]
    assert serve(engine, b"p", 1, Open(tokens(*prompt), 10)) == Opened(5)
    right = target_greedy(prompt, 3)
    draft = [*right[:2], (right[2] + 1) % VOCAB, 1, 2]
    verdict = serve(engine, b"p", 1, Draft(5, tokens(*draft)), seq=2)
    assert isinstance(verdict, Verdict)
    assert (verdict.accepted, verdict.next_token, verdict.new_length) == (2, right[2], 8)
    session = engine.sessions[1]
    assert session.tokens == prompt + right
    assert session.cached == 7
    assert runner.cached_tokens(session.blocks, 7) == session.tokens[:-1]
    assert len(session.blocks) == engine.blocks.blocks_for(7)  # rejected blocks returned


def test_full_accept_gives_a_bonus_token_and_empty_draft_one_token():
    engine, _ = make_engine()
    serve(engine, b"p", 1, Open(tokens(1, 2, 3), 10))
    right = target_greedy([1, 2, 3], 4)
    verdict = serve(engine, b"p", 1, Draft(3, tokens(*right[:3])), seq=2)
    assert (verdict.accepted, verdict.next_token) == (3, right[3])
    verdict = serve(engine, b"p", 1, Draft(7, tokens()), seq=3)
    assert (verdict.accepted, verdict.next_token) == (0, target_next([1, 2, 3, *right]))


def test_draft_on_a_stale_position_is_out_of_sync():
    engine, _ = make_engine()
    serve(engine, b"p", 1, Open(tokens(5, 6), 10))
    with pytest.raises(OutOfSync):
        engine.submit(b"p", 1, 2, Draft(5, tokens(7)))
    assert engine.sessions[1].tokens == [5, 6]  # nothing changed
    assert engine.submit(b"p", 1, 3, Draft(2, tokens(7))) is None
    with pytest.raises(OutOfSync):  # the first one is still being served
        engine.submit(b"p", 1, 4, Draft(2, tokens(7)))


def test_unknown_or_foreign_session():
    engine, _ = make_engine()
    serve(engine, b"p", 1, Open(tokens(5), 10))
    with pytest.raises(UnknownSession):
        engine.submit(b"p", 2, 1, Draft(1, tokens()))
    with pytest.raises(UnknownSession):
        engine.submit(b"intruder", 1, 1, Draft(1, tokens()))


def test_only_the_client_key_that_opened_a_session_may_reopen_it():
    engine, _ = make_engine()
    assert serve(engine, b"p", 1, Open(tokens(5, 6), 10), owner="alice") == Opened(2)
    with pytest.raises(AuthFailed, match="another client key"):
        engine.submit(b"q", 1, 1, Open(tokens(9), 10), owner="bob")
    session = engine.sessions[1]
    assert (session.peer, session.tokens, session.owner) == (b"p", [5, 6], "alice")
    with pytest.raises(UnknownSession):  # the same routing id under another key
        engine.submit(b"p", 1, 2, Draft(2, tokens()), owner="bob")
    assert isinstance(serve(engine, b"p", 1, Draft(2, tokens()), seq=2, owner="alice"), Verdict)
    # a reconnect (new connection, same key) takes its session along
    assert serve(engine, b"p2", 1, Open(tokens(5, 6), 10), seq=3, owner="alice") == Opened(2)
    assert engine.sessions[1].peer == b"p2"


def test_server_full_is_busy_with_a_retry_hint_and_reopen_still_works():
    engine, _ = make_engine(max_sessions=1, retry_after_ms=1500)
    serve(engine, b"p", 1, Open(tokens(5), 10))
    with pytest.raises(Overloaded) as busy:
        engine.submit(b"q", 2, 1, Open(tokens(5), 10))
    assert busy.value.retry_after_ms == 1500
    assert serve(engine, b"p", 1, Open(tokens(5, 6), 10)) == Opened(2)
    assert serve(engine, b"p", 1, Close()) == Closed()
    assert serve(engine, b"q", 2, Open(tokens(5), 10)) == Opened(1)  # room again


def test_reopen_reuses_the_common_prefix():
    engine, runner = make_engine()
    serve(engine, b"p", 1, Open(tokens(1, 2, 3, 4, 5), 10))
    before = runner.fed
    serve(engine, b"p", 1, Open(tokens(1, 2, 3, 9, 9, 9), 10), seq=2)
    assert runner.fed - before == 2  # only [9, 9] after the shared [1, 2, 3]
    session = engine.sessions[1]
    assert runner.cached_tokens(session.blocks, session.cached) == [1, 2, 3, 9, 9]


def test_long_prompt_is_prefilled_in_chunks():
    engine, runner = make_engine(prefill_chunk=16)
    prompt = [(i * 7) % VOCAB for i in range(70)]
    assert serve(engine, b"p", 1, Open(tokens(*prompt), 10)) == Opened(70)
    assert [s for s in runner.steps] == [[16], [16], [16], [16], [5]]
    verdict = serve(engine, b"p", 1, Draft(70, tokens()), seq=2)
    assert verdict.next_token == target_next(prompt)


def test_out_of_vocabulary_tokens_are_refused_without_side_effects():
    engine, _ = make_engine()
    with pytest.raises(InvalidToken):
        engine.submit(b"p", 1, 1, Open(tokens(1, VOCAB), 10))
    assert not engine.sessions
    serve(engine, b"p", 1, Open(tokens(1), 10))
    with pytest.raises(InvalidToken):
        engine.submit(b"p", 1, 2, Draft(1, tokens(VOCAB + 3)))
    assert engine.sessions[1].tokens == [1]


def test_draft_longer_than_allowed_or_past_the_kv_budget():
    engine, _ = make_engine(num_blocks=9, block_size=4)  # 32 usable tokens
    serve(engine, b"p", 1, Open(tokens(1), 10))
    with pytest.raises(LimitExceeded):
        engine.submit(b"p", 1, 2, Draft(1, tokens(*range(9))))
    with pytest.raises(LimitExceeded):
        engine.submit(b"p", 2, 1, Open(tokens(*([1] * 40)), 10))


def test_idle_sessions_expire_and_free_their_blocks():
    engine, _ = make_engine()
    serve(engine, b"p", 1, Open(tokens(*range(1, 30)), 10))
    assert engine.blocks.used > 0
    assert engine.expire(engine.sessions[1].last_active + 10_000) == 1
    assert not engine.sessions and engine.blocks.used == 0


def test_lru_idle_session_is_evicted_and_reopens_with_identical_output():
    # 12 usable blocks of 4 tokens: room for one 30-token session plus a draft, not two.
    engine, _ = make_engine(num_blocks=13, block_size=4, max_draft_tokens=4, step_tokens=64)
    a = [(3 * i) % VOCAB for i in range(30)]
    b = [(5 * i + 1) % VOCAB for i in range(30)]
    serve(engine, b"a", 1, Open(tokens(*a), 10))
    serve(engine, b"b", 2, Open(tokens(*b), 10))  # needs a's blocks: a is idle, evicted
    assert 1 not in engine.sessions and engine.scheduler.evictions == 1
    with pytest.raises(UnknownSession):
        engine.submit(b"a", 1, 2, Draft(30, tokens()))
    # the client re-opens with its full history and carries on
    assert serve(engine, b"a", 1, Open(tokens(*a), 10), seq=3) == Opened(30)
    history = list(a)
    for seq in range(4, 8):
        draft = target_greedy(history, 2)
        verdict = serve(engine, b"a", 1, Draft(len(history), tokens(*draft)), seq=seq)
        history += [*draft[:verdict.accepted], verdict.next_token]
    assert history[30:] == target_greedy(a, len(history) - 30)


def test_preempted_open_is_told_busy_when_nothing_fits():
    # Two 30-token prompts prefilled 8 tokens a step fill the 12 blocks before either ends.
    engine, _ = make_engine(num_blocks=13, block_size=4, max_draft_tokens=4, step_tokens=64,
                            prefill_chunk=8)
    a = [1] * 30
    assert engine.submit(b"a", 1, 1, Open(tokens(*a), 10)) is None
    assert engine.submit(b"b", 2, 1, Open(tokens(*a), 10)) is None  # both admitted at once
    replies = {r.session: r.msg for r in _drain(engine)}
    assert replies[1] == Opened(30)
    assert isinstance(replies[2], Error) and replies[2].code == ErrorCode.OVERLOADED
    assert replies[2].retry_after_ms > 0
    assert 2 not in engine.sessions and engine.scheduler.preemptions == 1


def _drain(engine):
    out = []
    for _ in range(50):
        out += engine.step()
        if not engine.has_work:
            return out
    raise AssertionError("work left after 50 steps")


def test_sessions_share_a_common_prompt_prefix_and_stay_exact():
    engine, runner = make_engine(block_size=4)
    system = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]  # two full blocks and a bit
    first, second = [*system, 1, 2, 3], [*system, 7, 8]
    serve(engine, b"a", 1, Open(tokens(*first), 20))
    before = runner.fed
    serve(engine, b"b", 2, Open(tokens(*second), 20))
    assert runner.fed - before == len(second) - 1 - 8  # the two full blocks were shared
    assert engine.sessions[2].blocks[:2] == engine.sessions[1].blocks[:2]
    assert engine.stats()["prefix_hit_tokens"] == 8
    for rnd in range(4):  # both draft, with rejections, in the same steps
        for peer, sid in ((b"a", 1), (b"b", 2)):
            session = engine.sessions[sid]
            right = target_greedy(session.tokens, 3)
            draft = [right[0], (right[1] + 1) % VOCAB, right[2]]
            engine.submit(peer, sid, 2 + rnd, Draft(session.length, tokens(*draft)))
        answered = {r.session: r.msg for r in engine.step()}
        assert all(isinstance(m, Verdict) and m.accepted == 1 for m in answered.values())
    for sid, prompt in ((1, first), (2, second)):
        session = engine.sessions[sid]
        assert session.tokens[len(prompt):] == target_greedy(prompt, 8)
        assert runner.cached_tokens(session.blocks, session.cached) == session.tokens[:-1]
    serve(engine, b"a", 1, Close(), seq=9)
    before = runner.fed
    assert serve(engine, b"c", 3, Open(tokens(*first), 20)) == Opened(len(first))
    assert runner.fed == before  # two blocks shared with session 2, one revived from 1's
    verdict = serve(engine, b"c", 3, Draft(len(first), tokens()), seq=2)
    assert (verdict.accepted, verdict.next_token) == (0, target_greedy(first, 1)[0])


def test_a_reopen_shorter_than_a_shared_block_recomputes_instead_of_overwriting():
    engine, runner = make_engine(block_size=4)
    prompt = list(range(20, 33))  # 13 tokens: three full blocks cached
    serve(engine, b"a", 1, Open(tokens(*prompt), 20))
    serve(engine, b"b", 2, Open(tokens(*prompt, 5), 20))
    shared = engine.sessions[1].blocks[:3]
    assert engine.sessions[2].blocks[:3] == shared
    edited = [*prompt[:6], 99, 98, 97]  # session 1 edits its history mid-block
    serve(engine, b"a", 1, Open(tokens(*edited), 20), seq=2)
    s1, s2 = engine.sessions[1], engine.sessions[2]
    assert s1.blocks[0] == shared[0] and shared[1] not in s1.blocks
    assert runner.cached_tokens(s2.blocks, s2.cached) == [*prompt, 5][:s2.cached]
    assert runner.cached_tokens(s1.blocks, s1.cached) == edited[:-1]
    verdict = serve(engine, b"b", 2, Draft(s2.length, tokens()), seq=2)
    assert verdict.next_token == target_greedy([*prompt, 5], 1)[0]


def _budgets_after_a_round(rule: str, utilization: float) -> dict[int, int]:
    """Two sessions, one whose drafts always hold and one whose drafts always miss, a few
    rounds each; then the budget each one's VERDICT carries."""
    engine, _ = make_engine(step_tokens=64, max_draft_tokens=8,
                            draft_budget=rule)
    # the measured share of wall time in passes and pass cost, held where the test sets them
    engine._observe_utilization = lambda start, seconds: None
    engine.scheduler.observe = lambda n, seconds: None
    prompts = {1: [5, 6, 7], 2: [9, 8, 7]}
    for sid, prompt in prompts.items():
        serve(engine, b"p", sid, Open(tokens(*prompt), 64))
    budgets: dict[int, int] = {}
    for seq in range(2, 8):
        for sid in prompts:
            context = engine.sessions[sid].tokens
            right = target_greedy(context, 4)
            draft = right if sid == 1 else [(right[0] + 1) % VOCAB, *right[1:]]
            engine.submit(b"p", sid, seq, Draft(len(context), tokens(*draft)))
        engine.utilization = utilization
        engine.scheduler.s_overhead, engine.scheduler.s_per_token = 0.020, 0.004
        for reply in run_steps(engine):
            assert isinstance(reply.msg, Verdict)
            budgets[reply.session] = reply.msg.budget
    return budgets


def test_budget_is_the_share_while_the_server_has_time_to_spare():
    assert _budgets_after_a_round("goodput", 0.5) == {1: 8, 2: 8}  # min(64 // 2 - 1, 8)
    assert _budgets_after_a_round("share", 1.0) == {1: 8, 2: 8}


def test_a_busy_server_asks_less_of_the_draft_that_misses():
    budgets = _budgets_after_a_round("goodput", 1.0)
    assert budgets[1] > budgets[2] == 1
