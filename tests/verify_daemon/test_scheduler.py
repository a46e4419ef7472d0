"""Scheduling under load with the scripted target: exact output for every session, bounded
waiting, and the KV budget held, while sessions are admitted, refused, evicted and re-opened."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import pytest
from edgespec.wire.codec import Close, Draft, Error, Open, Opened, Verdict
from edgespec.wire.errors import ErrorCode, Overloaded, UnknownSession, WireError

from .scripted import VOCAB, make_engine, target_greedy, tokens


def test_drafts_are_served_first_and_prefill_still_progresses():
    engine, runner = make_engine(step_tokens=20, max_draft_tokens=4, prefill_chunk=64)
    for sid in range(1, 5):
        engine.submit(b"p", sid, 1, Open(tokens(sid), 10))  # one token: open at once
    engine.submit(b"q", 9, 1, Open(tokens(*range(60)), 10))  # a long prompt
    for sid in range(1, 5):
        engine.submit(b"p", sid, 2, Draft(1, tokens(1, 2, 3, 4)))
    engine.step()
    # 20 tokens: a quarter kept for the prefill; the drafts in order of arrival take the rest
    assert runner.steps[-1] == [5, 5, 5, 5]  # three drafts, then 5 prompt tokens
    engine.step()
    assert runner.steps[-1] == [5, 15]  # the fourth draft, then more of the prompt
    assert engine.scheduler.max_wait_steps <= 1


def test_every_request_waits_a_bounded_number_of_steps():
    engine, _ = make_engine(step_tokens=18, max_draft_tokens=8, max_sessions=8)
    for sid in range(8):
        engine.submit(b"p", sid, 1, Open(tokens(sid + 1), 10))
    for _ in range(5):  # everyone drafts the most it may, every round
        for sid in range(8):
            s = engine.sessions[sid]
            engine.submit(b"p", sid, 2, Draft(s.length, tokens(*[1] * 8)))
        while engine.has_work:
            engine.step()
    # 8 drafts of 9 tokens, 18 tokens a step: the last one sits out 3 steps, never more
    assert engine.scheduler.max_wait_steps == 3


@dataclass
class Client:
    sid: int
    prompt: list[int]
    want: int
    rng: random.Random
    history: list[int] = field(default_factory=list)
    seq: int = 0
    waiting: bool = False
    opened: bool = False
    retry_at: int = 0
    reopens: int = 0
    busy: int = 0
    _last_draft: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.history) - len(self.prompt) >= self.want

    def request(self, step: int):
        if self.waiting or step < self.retry_at or self.done:
            return None
        self.seq += 1
        self.waiting = True
        if not self.opened:
            return Open(tokens(*self.history), self.want)
        right = target_greedy(self.history, 5)
        k = self.rng.randrange(0, 6)
        draft = right[:k]
        if k and self.rng.random() < 0.4:  # a wrong guess somewhere
            j = self.rng.randrange(k)
            draft[j] = (draft[j] + 1) % VOCAB
        return Draft(len(self.history), tokens(*draft))

    def receive(self, msg, step: int) -> None:
        self.waiting = False
        if isinstance(msg, Opened):
            self.opened = True
        elif isinstance(msg, Verdict):
            self.history += [*self._last_draft[:msg.accepted], msg.next_token]
        elif isinstance(msg, Error) and msg.code == ErrorCode.UNKNOWN_SESSION:
            self.opened, self.reopens = False, self.reopens + 1
        elif isinstance(msg, Error) and msg.code == ErrorCode.OVERLOADED:
            self.opened, self.busy, self.retry_at = False, self.busy + 1, step + 2
        else:
            raise AssertionError(f"unexpected reply {msg}")


@pytest.mark.parametrize("seed", range(6))
def test_random_load_is_exact_and_keeps_the_kv_budget(seed):
    rng = random.Random(seed)
    # 28 usable blocks of 4 tokens for up to 6 sessions of ~30-60 tokens: evictions happen
    engine, runner = make_engine(num_blocks=29, block_size=4, max_sessions=6,
                                 max_draft_tokens=5, step_tokens=24, prefill_chunk=8)
    clients = [Client(sid, [rng.randrange(VOCAB) for _ in range(rng.randrange(3, 30))],
                      rng.randrange(10, 30), random.Random(sid)) for sid in range(1, 11)]
    for c in clients:
        c.history = list(c.prompt)
    by_sid = {c.sid: c for c in clients}
    for step in range(3000):
        for c in clients:
            msg = c.request(step)
            if msg is None:
                continue
            c._last_draft = msg.tokens.tolist() if isinstance(msg, Draft) else []
            try:
                reply = engine.submit(b"p%d" % c.sid, c.sid, c.seq, msg)
            except (Overloaded, UnknownSession) as exc:
                reply = Error(exc.code, str(exc), getattr(exc, "retry_after_ms", 0))
            if reply is not None:
                c.receive(reply, step)
        for _peer, sid, seq, msg, _epoch in engine.step():
            if seq == by_sid[sid].seq:
                by_sid[sid].receive(msg, step)
        assert engine.blocks.used <= engine.blocks.capacity
        for s in engine.sessions.values():
            if s.idle:
                assert runner.cached_tokens(s.blocks, s.cached) == s.tokens[:s.cached]
        for c in clients:
            if c.done and c.sid in engine.sessions and not c.waiting:
                with contextlib.suppress(WireError):
                    engine.submit(b"p%d" % c.sid, c.sid, c.seq + 1, Close())
        if all(c.done for c in clients):
            break
    assert all(c.done for c in clients)
    for c in clients:
        generated = c.history[len(c.prompt):]
        assert generated == target_greedy(c.prompt, len(generated))
    assert engine.scheduler.evictions + engine.scheduler.preemptions > 0
    assert sum(c.busy for c in clients) > 0
    assert engine.blocks.peak_used <= engine.blocks.capacity


def test_prefill_is_cut_to_the_step_time_while_others_wait():
    engine, runner = make_engine(step_tokens=64, max_draft_tokens=4, prefill_chunk=64)
    engine.submit(b"p", 1, 1, Open(tokens(1), 10))  # open at once
    engine.submit(b"q", 2, 1, Open(tokens(*range(0, 100)), 10))  # 99 tokens to prefill
    engine.submit(b"p", 1, 2, Draft(1, tokens(1, 2, 3, 4)))
    engine.scheduler.s_per_token = engine.scheduler.step_s / 24  # measured: 24 tokens a step
    engine.scheduler.observe = lambda n, s: None  # keep that cost for this test
    engine.step()
    assert runner.steps[-1] == [5, 19]  # the draft, then what fits the step's time
    engine.submit(b"p", 1, 3, Draft(engine.sessions[1].length, tokens(1)))
    engine.step()
    assert runner.steps[-1] == [2, 22]


def test_prefill_takes_the_whole_budget_when_nobody_waits_on_it():
    engine, runner = make_engine(step_tokens=64, max_draft_tokens=4, prefill_chunk=64)
    engine.submit(b"q", 2, 1, Open(tokens(*range(0, 100)), 10))
    engine.scheduler.s_per_token = engine.scheduler.step_s / 24
    engine.scheduler.observe = lambda n, s: None
    engine.step()
    assert runner.steps[-1] == [64]


def test_the_shortest_prompt_is_prefilled_first():
    engine, runner = make_engine(step_tokens=64, max_draft_tokens=4, prefill_chunk=64)
    engine.submit(b"q", 2, 1, Open(tokens(*range(0, 100)), 10))  # 99 to prefill, first
    engine.submit(b"r", 3, 1, Open(tokens(*range(1, 11)), 10))  # 9 to prefill, later
    engine.step()
    assert runner.steps[-1] == [9, 55]


def test_step_cost_is_fitted_as_overhead_plus_tokens():
    engine, _ = make_engine()
    scheduler = engine.scheduler
    for i in range(200):  # 30 ms a pass plus 5 ms a token
        n = (1, 17, 40, 9)[i % 4]
        scheduler.observe(n, 0.030 + 0.005 * n)
    assert abs(scheduler.s_per_token - 0.005) < 1e-4
    assert abs(scheduler.s_overhead - 0.030) < 1e-3
    # 150 ms a step leaves 120 ms for tokens: 24 of them, not 150 / (average cost per token)
    assert scheduler._time_tokens(latency_bound=True) in (23, 24)
