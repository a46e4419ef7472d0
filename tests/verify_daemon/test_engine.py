"""Engine bookkeeping with a scripted target: next token = (previous + 1) % vocab."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgespec.verify_daemon.config import DaemonConfig
from edgespec.verify_daemon.engine import Engine
from edgespec.verify_daemon.model_runner import TargetInfo
from edgespec.wire.codec import Draft, Hello, Open, Opened, Verdict, Welcome
from edgespec.wire.errors import (
    InvalidToken,
    LimitExceeded,
    ModelMismatch,
    OutOfSync,
    Overloaded,
    UnknownSession,
)

VOCAB = 100
FP = b"f" * 32


class ScriptedRunner:
    """Caches are token lists; the 'model' predicts previous + 1."""

    def __init__(self) -> None:
        self.info = TargetInfo("scripted", VOCAB, 64, (0,), "", FP)
        self.prefilled = 0

    def new_cache(self) -> list[int]:
        return []

    def prefill(self, cache: list[int], tokens: list[int], chunk: int) -> None:
        self.prefilled += len(tokens)
        cache.extend(tokens)

    def verify_logits(self, cache: list[int], tokens: list[int]) -> torch.Tensor:
        cache.extend(tokens)
        return torch.nn.functional.one_hot(
            torch.tensor([(t + 1) % VOCAB for t in tokens]), VOCAB).float()

    @staticmethod
    def new_generator() -> torch.Generator:
        return torch.Generator()

    @staticmethod
    def truncate(cache: list[int], length: int) -> None:
        del cache[length:]


def make_engine(**overrides: int) -> tuple[Engine, ScriptedRunner]:
    runner = ScriptedRunner()
    config = DaemonConfig(target="x", max_sessions=overrides.get("max_sessions", 4),
                          max_draft_tokens=8)
    return Engine(runner, config), runner


def tokens(*ids: int) -> np.ndarray:
    return np.array(ids, dtype=np.int32)


def test_hello_checks_the_fingerprint():
    engine, _ = make_engine()
    assert isinstance(engine.hello(Hello(FP)), Welcome)
    with pytest.raises(ModelMismatch):
        engine.hello(Hello(b"x" * 32))


def test_round_accepts_prefix_and_keeps_cache_in_step():
    engine, _ = make_engine()
    assert engine.open(b"p", 1, Open(tokens(5, 6, 7), 10)) == Opened(3)
    verdict = engine.verify(b"p", 1, Draft(3, tokens(8, 9, 42)))
    assert verdict == Verdict(2, 10, 6, verdict.verify_us)
    session = engine.sessions[1]
    assert session.tokens == [5, 6, 7, 8, 9, 10]
    assert session.cache == [5, 6, 7, 8, 9]  # everything but the last verified token


def test_draft_on_a_stale_position_is_out_of_sync():
    engine, _ = make_engine()
    engine.open(b"p", 1, Open(tokens(5, 6), 10))
    with pytest.raises(OutOfSync):
        engine.verify(b"p", 1, Draft(5, tokens(7)))
    assert engine.sessions[1].tokens == [5, 6]  # nothing changed


def test_unknown_or_foreign_session():
    engine, _ = make_engine()
    engine.open(b"p", 1, Open(tokens(5), 10))
    with pytest.raises(UnknownSession):
        engine.verify(b"p", 2, Draft(1, tokens()))
    with pytest.raises(UnknownSession):
        engine.verify(b"intruder", 1, Draft(1, tokens()))


def test_server_full_is_overloaded_and_reopen_still_works():
    engine, _ = make_engine(max_sessions=1)
    engine.open(b"p", 1, Open(tokens(5), 10))
    with pytest.raises(Overloaded):
        engine.open(b"q", 2, Open(tokens(5), 10))
    assert engine.open(b"p", 1, Open(tokens(5, 6), 10)) == Opened(2)


def test_reopen_reuses_the_common_prefix():
    engine, runner = make_engine()
    engine.open(b"p", 1, Open(tokens(1, 2, 3, 4, 5), 10))
    before = runner.prefilled
    engine.open(b"p", 1, Open(tokens(1, 2, 3, 9, 9, 9), 10))
    assert runner.prefilled - before == 2  # only [9, 9] after the shared [1, 2, 3]
    assert engine.sessions[1].cache == [1, 2, 3, 9, 9]


def test_out_of_vocabulary_tokens_are_refused_without_side_effects():
    engine, _ = make_engine()
    with pytest.raises(InvalidToken):
        engine.open(b"p", 1, Open(tokens(1, VOCAB), 10))
    assert not engine.sessions
    engine.open(b"p", 1, Open(tokens(1), 10))
    with pytest.raises(InvalidToken):
        engine.verify(b"p", 1, Draft(1, tokens(VOCAB + 3)))
    assert engine.sessions[1].tokens == [1]


def test_draft_longer_than_allowed_or_past_context():
    engine, _ = make_engine()
    engine.open(b"p", 1, Open(tokens(1), 10))
    with pytest.raises(LimitExceeded):
        engine.verify(b"p", 1, Draft(1, tokens(*range(9))))
    with pytest.raises(LimitExceeded):
        engine.open(b"p", 2, Open(tokens(*([1] * 64)), 10))


def test_idle_sessions_expire():
    engine, _ = make_engine()
    engine.open(b"p", 1, Open(tokens(1), 10))
    assert engine.expire(engine.sessions[1].last_active + 10_000) == 1
    assert not engine.sessions
