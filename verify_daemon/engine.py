"""The verification engine: sessions, admission, and one verify step per draft.

The server hands decoded messages here and sends back whatever comes out; nothing here
touches sockets, and only ``ModelRunner`` touches tensors.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from edgespec.models.fingerprint import describe_mismatch
from edgespec.verify_daemon.config import DaemonConfig
from edgespec.verify_daemon.model_runner import ModelRunner
from edgespec.verify_daemon.session import Session
from edgespec.verify_daemon.verify import greedy_accept
from edgespec.wire.codec import (
    Close,
    Closed,
    Draft,
    Hello,
    Message,
    Open,
    Opened,
    Ping,
    Pong,
    TokenArray,
    Verdict,
    Welcome,
)
from edgespec.wire.errors import (
    InvalidToken,
    LimitExceeded,
    MalformedFrame,
    ModelMismatch,
    OutOfSync,
    Overloaded,
    UnknownSession,
    Unsupported,
)

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, runner: ModelRunner, config: DaemonConfig):
        self.runner = runner
        self.config = config
        self.info = runner.info
        self.max_context = min(config.max_context, runner.info.max_context)
        self.sessions: OrderedDict[int, Session] = OrderedDict()  # LRU order: oldest first
        self.verified_tokens = 0
        self.forward_passes = 0

    # ------------------------------------------------------------ dispatch

    def handle(self, peer: bytes, sid: int, msg: Message) -> Message:
        """One request in, one reply out; raises only ``WireError`` for the client's mistakes."""
        if isinstance(msg, Draft):
            return self.verify(peer, sid, msg)
        if isinstance(msg, Open):
            return self.open(peer, sid, msg)
        if isinstance(msg, Hello):
            return self.hello(msg)
        if isinstance(msg, Close):
            self.close(peer, sid)
            return Closed()
        if isinstance(msg, Ping):
            return Pong(msg.stamp)
        raise MalformedFrame(f"{type(msg).__name__} is not a request")

    def hello(self, msg: Hello) -> Welcome:
        if msg.fingerprint != self.info.fingerprint:
            raise ModelMismatch(
                "draft and target tokenizers differ: "
                + describe_mismatch(msg.fingerprint, self.info.fingerprint)
            )
        return Welcome(
            fingerprint=self.info.fingerprint,
            vocab_size=self.info.vocab_size,
            max_draft_tokens=self.config.max_draft_tokens,
            max_context=self.max_context,
            model_name=self.info.name,
            eos_ids=self.info.eos_ids,
            chat_template=self.info.chat_template,
        )

    # ------------------------------------------------------------ sessions

    def open(self, peer: bytes, sid: int, msg: Open) -> Opened:
        """Create or rebuild a session at the client's position, reusing a common KV prefix."""
        if msg.sampling.temperature != 0.0 or msg.sampling.verify != 0:
            raise Unsupported("only greedy verification (temperature 0) is served by this daemon")
        self._check_tokens(msg.tokens)
        tokens: list[int] = msg.tokens.tolist()
        if len(tokens) >= self.max_context:
            raise LimitExceeded(f"{len(tokens)} tokens exceed the context of {self.max_context}")
        old = self.sessions.get(sid)
        if old is not None and old.peer != peer:  # a reconnect (the server refused stale epochs)
            log.info("session %#x moves to a new connection", sid)
        if old is None and len(self.sessions) >= self.config.max_sessions:
            raise Overloaded(f"server full: {len(self.sessions)} sessions; retry later")
        now = time.monotonic()
        if old is not None:
            cache = old.cache
            keep = _common_prefix(old.tokens[:-1], tokens[:-1])
            self.runner.truncate(cache, keep)
        else:
            cache, keep = self.runner.new_cache(), 0
        self.runner.prefill(cache, tokens[keep:-1], self.config.prefill_chunk)
        self.sessions[sid] = Session(
            sid, peer, tokens, cache, msg.sampling, msg.max_new_tokens, len(tokens), now
        )
        self.sessions.move_to_end(sid)
        return Opened(len(tokens))

    def close(self, peer: bytes, sid: int) -> None:
        session = self._session(peer, sid)
        del self.sessions[session.sid]

    def expire(self, now: float) -> int:
        """Drop sessions idle past the limit (a client that vanished); returns how many."""
        stale = [s.sid for s in self.sessions.values()
                 if now - s.last_active > self.config.session_idle_s]
        for sid in stale:
            del self.sessions[sid]
        return len(stale)

    # ------------------------------------------------------------ verification

    def verify(self, peer: bytes, sid: int, msg: Draft) -> Verdict:
        session = self._session(peer, sid)
        if msg.base_length != session.length:
            raise OutOfSync(
                f"draft extends {msg.base_length} tokens but the session holds {session.length}"
            )
        draft: list[int] = msg.tokens.tolist()
        if len(draft) > self.config.max_draft_tokens:
            raise LimitExceeded(f"draft of {len(draft)} exceeds {self.config.max_draft_tokens}")
        self._check_tokens(msg.tokens)
        if session.length + len(draft) >= self.max_context:
            raise LimitExceeded(f"context of {self.max_context} tokens is full")
        start = time.perf_counter()
        picks = self.runner.greedy_picks(session.cache, [session.tokens[-1], *draft])
        accepted, next_token = greedy_accept(draft, picks)
        session.tokens.extend(draft[:accepted])
        session.tokens.append(next_token)
        self.runner.truncate(session.cache, session.length - 1)
        verify_us = int((time.perf_counter() - start) * 1e6)
        session.rounds += 1
        session.drafted += len(draft)
        session.accepted += accepted
        session.last_active = time.monotonic()
        self.sessions.move_to_end(sid)
        self.forward_passes += 1
        self.verified_tokens += accepted + 1
        return Verdict(accepted, next_token, session.length, verify_us)

    # ------------------------------------------------------------ checks

    def _session(self, peer: bytes, sid: int) -> Session:
        session = self.sessions.get(sid)
        if session is None or session.peer != peer:
            raise UnknownSession(f"unknown session {sid:#x}: re-open it with the full history")
        return session

    def _check_tokens(self, tokens: TokenArray) -> None:
        vocab = self.info.vocab_size
        bad = tokens[(tokens < 0) | (tokens >= vocab)]
        if bad.size:
            raise InvalidToken(f"token id {int(bad[0])} outside the target vocabulary of {vocab}")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
