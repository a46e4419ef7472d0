"""The client's DEALER link to verifyd: request ids, liveness, reconnection and typed errors.

Like zguide's asynchronous Majordomo client, sending and receiving are separate calls, so
the speculative loop can keep drafting while a verification is in flight. Replies carry the
request's sequence number and the link's epoch; anything else is stale and dropped.

Liveness and recovery follow the Guide's Lazy/Paranoid Pirate: ZMTP heartbeats (answered by
libzmq's I/O thread, so a long forward pass never looks like a dead daemon) and a socket
monitor tell us when the connection drops; a DEALER would never say so and would silently
lose the request in flight. We then close the DEALER (``LINGER=0``: nothing queued for the
old daemon survives), open a new one under the next epoch, say HELLO again with capped
exponential backoff and jitter, and raise ``Reconnected`` so the caller re-opens its session
from its own history. A refused CURVE handshake sends no error either, so the monitor's
``EVENT_HANDSHAKE_FAILED_*`` events are what let us say why.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import zmq
from edgespec.wire.codec import Error, Hello, Message, Welcome, decode, encode
from edgespec.wire.curve import CurveClient
from edgespec.wire.errors import (
    AuthFailed,
    ErrorCode,
    ModelMismatch,
    UnknownSession,
    WireError,
    error_for_code,
)
from edgespec.wire.protocol import Limits

M = TypeVar("M", bound=Message)

_MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


def new_session_id() -> int:
    """Random and non-zero: the client names its sessions, so a re-open can reuse the name."""
    return secrets.randbits(63) | 1


def expect(reply: Message, kind: type[M]) -> M:
    """``reply`` as the message type the request calls for, or a protocol error."""
    if not isinstance(reply, kind):
        raise WireError(f"expected {kind.TYPE.name}, got {type(reply).__name__}")
    return reply


class DaemonTimeout(WireError):
    """No reply within the deadline: the daemon is down, stalled or unreachable."""

    code = ErrorCode.INTERNAL


class LinkLost(WireError):
    """The connection dropped (daemon killed, stalled past the heartbeat timeout, network)."""

    code = ErrorCode.INTERNAL


class DaemonUnavailable(WireError):
    """The daemon stayed away past ``reconnect_for_s``; the caller still holds its history."""

    code = ErrorCode.INTERNAL


class Reconnected(UnknownSession):
    """The link is back on a new connection: the request in flight is lost, re-open the
    session from the client's history (the daemon may or may not still hold it)."""


@dataclass(frozen=True, slots=True)
class Liveness:
    """How fast a dead daemon is noticed and how long we try to get it back."""

    heartbeat_s: float = 1.0  # ZMTP PING interval; no PONG within 3 intervals drops the link
    connect_timeout_s: float = 10.0  # a HELLO that gets no WELCOME in this long is a failed try
    reconnect_for_s: float = 60.0  # give up (keeping the conversation) after this long
    backoff_s: tuple[float, float] = (0.5, 8.0)  # first and largest pause between tries
    busy_for_s: float = 120.0  # a daemon that answers OVERLOADED this long: give up (bounded)

    @property
    def heartbeat_timeout_s(self) -> float:
        return 3 * self.heartbeat_s


class Link:
    """One logical connection to verifyd; owns its DEALER, replaced on every reconnect."""

    def __init__(self, endpoint: str, timeout_s: float = 30.0, limits: Limits | None = None,
                 context: zmq.Context | None = None, curve: CurveClient | None = None,
                 liveness: Liveness | None = None):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.limits = limits or Limits()
        self.context = context or zmq.Context.instance()
        self.curve = curve
        self.liveness = liveness or Liveness()
        self.notify: Callable[[str], None] | None = None  # shows reconnect progress to the user
        self.epoch = 0
        self.reconnects = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._seq = secrets.randbelow(1 << 31)
        self._fingerprint: bytes | None = None  # set by the first WELCOME; enables recovery
        self._mode = 0  # the HELLO's tokenizer mode, said again on every reconnect
        self._target = b""  # the target's fingerprint: a daemon back with another is refused
        self._down = False
        self._open_socket()

    @property
    def down(self) -> bool:
        """True after the daemon stayed away past ``reconnect_for_s`` (until a retry works)."""
        return self._down

    # ------------------------------------------------------------ socket lifecycle

    def _open_socket(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.limits.max_frame_bytes)
        heartbeat_ms = int(self.liveness.heartbeat_s * 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * heartbeat_ms)
        if self.curve is not None:
            self.curve.apply(sock)
        self.monitor = sock.get_monitor_socket(
            _MONITORED, addr=f"inproc://edgespec-monitor-{secrets.token_hex(8)}")
        sock.connect(self.endpoint)
        self.socket = sock
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.connected = False
        self.handshake_failure: int | None = None  # the last EVENT_HANDSHAKE_FAILED_* seen

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(0)
        self.socket.close(0)

    def _reopen(self) -> None:
        self.close()
        self.epoch = (self.epoch + 1) & 0xFFFF
        self._open_socket()

    # ------------------------------------------------------------ requests

    def send(self, msg: Message, session: int = 0) -> int:
        """Send ``msg``; return the request id to wait for."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        frames = encode(msg, session, self._seq, self.epoch)
        try:  # never block: a DEALER whose handshake failed has no pipe to queue on
            self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._read_monitor(recover=False)  # raises the handshake failure, if that is why
            if self._fingerprint is None:
                raise LinkLost(f"cannot queue a request for {self.endpoint}") from None
            self._down = True  # the next wait or poll reconnects
            return self._seq
        self.bytes_sent += sum(len(f) for f in frames)
        return self._seq

    def reply_waiting(self) -> bool:
        """True when a reply has arrived and not been read yet (reads nothing; ZMTP
        heartbeats are not messages): the daemon is done with what we last asked."""
        return bool(self.socket.poll(0, zmq.POLLIN))

    def poll(self, seq: int) -> Message | None:
        """The reply to ``seq`` if it has arrived, else None; never blocks (but may recover)."""
        return self._receive(seq, timeout_ms=0, recover=True)

    def wait(self, seq: int, timeout_s: float | None = None, recover: bool = True) -> Message:
        """Block until the reply to ``seq``; raise the daemon's error as a typed ``WireError``.

        With ``recover`` (and once welcomed), a lost connection or a reply that never comes is
        repaired here and reported as ``Reconnected``; without, as ``LinkLost``/``DaemonTimeout``.
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                if recover and self._fingerprint is not None:
                    self._recover(f"no reply in {limit:.0f} s")
                self._raise_handshake_failure()
                raise DaemonTimeout(f"no reply from {self.endpoint} within {limit:.0f} s")
            reply = self._receive(seq, remaining_ms, recover)
            if reply is not None:
                return reply

    def request(self, msg: Message, session: int = 0, timeout_s: float | None = None,
                recover: bool = True) -> Message:
        return self.wait(self.send(msg, session), timeout_s, recover)

    def hello(self, fingerprint: bytes, name: str = "edgespec", mode: int = 0) -> Welcome:
        """Say HELLO within the handshake timeout; remember the fingerprint (and the
        tokenizer mode, and the target's fingerprint) for reconnects."""
        timeout = min(self.timeout_s, self.liveness.connect_timeout_s)
        welcome = expect(self.request(Hello(fingerprint, name, mode), timeout_s=timeout,
                                      recover=False), Welcome)
        self._fingerprint, self._mode, self._target = fingerprint, mode, welcome.fingerprint
        return welcome

    # ------------------------------------------------------------ receiving and liveness

    def _receive(self, seq: int, timeout_ms: int, recover: bool) -> Message | None:
        if self._down and recover and self._fingerprint is not None:
            self._recover("the daemon was unreachable")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            ready = dict(self.poller.poll(max(0, int((deadline - time.monotonic()) * 1000))))
            if self.monitor in ready:
                self._read_monitor(recover)
            if self.socket in ready:
                frames = self.socket.recv_multipart()
                self.bytes_received += sum(len(f) for f in frames)
                envelope = decode(frames, self.limits)
                if envelope.seq != seq or envelope.epoch != self.epoch:
                    continue  # a late reply to a request we gave up on
                if isinstance(envelope.msg, Error):
                    raise error_for_code(envelope.msg.code, envelope.msg.message,
                                         envelope.msg.retry_after_ms)
                return envelope.msg
            if not ready and time.monotonic() >= deadline:
                return None

    def _read_monitor(self, recover: bool) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                reason = (f"connection lost (daemon gone, or silent for "
                          f"{self.liveness.heartbeat_timeout_s:.0f} s)")
                if recover and self._fingerprint is not None:
                    self._recover(reason)
                raise LinkLost(reason)
            elif event & (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                          | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self.handshake_failure = event
                # Final at once: an explicit refusal, or any failure before the first WELCOME;
                # while recovering, a handshake torn by a dying daemon is only retried.
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH or self._fingerprint is None:
                    self._raise_handshake_failure()

    def _raise_handshake_failure(self) -> None:
        """Say why a handshake failed, if one did: the refused side never gets a message."""
        if self.handshake_failure is None:
            return
        if self.handshake_failure == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise AuthFailed(f"{self.endpoint} refused this client's key: it is not on the "
                             "daemon's allow-list (ask the operator to add your public key)")
        if self.curve is None:
            raise AuthFailed(f"{self.endpoint} refused a plain connection: it requires CurveZMQ "
                             "encryption; pass --server-key (the operator's server.key)")
        raise AuthFailed(f"CURVE handshake with {self.endpoint} failed: wrong --server-key, "
                         "or the daemon does not use CurveZMQ")

    # ------------------------------------------------------------ recovery (Lazy Pirate)

    def _say(self, message: str) -> None:
        if self.notify is not None:
            self.notify(message)

    def _recover(self, reason: str) -> None:
        """Reconnect and re-HELLO with capped exponential backoff and jitter, then raise
        ``Reconnected``; ``DaemonUnavailable`` once ``reconnect_for_s`` has passed."""
        live = self.liveness
        give_up = time.monotonic() + live.reconnect_for_s
        delay = live.backoff_s[0]
        assert self._fingerprint is not None
        for attempt in range(1, 1_000_000):
            self._reopen()
            self._say(f"reconnecting… ({reason}; attempt {attempt})")
            try:
                timeout = max(0.5, min(live.connect_timeout_s, give_up - time.monotonic()))
                welcome = expect(self.request(Hello(self._fingerprint, "edgespec", self._mode),
                                              timeout_s=timeout, recover=False), Welcome)
            except (DaemonTimeout, LinkLost):
                pass
            except AuthFailed:  # an explicit refusal is final; a torn handshake is retried
                if self.handshake_failure == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    raise
            else:
                if welcome.fingerprint != self._target:
                    raise ModelMismatch("the daemon came back with another target model")
                self._down = False
                self.reconnects += 1
                self._say("")
                raise Reconnected(f"reconnected to {self.endpoint} ({reason})")
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                self._down = True
                raise DaemonUnavailable(
                    f"verifyd at {self.endpoint} unreachable for {live.reconnect_for_s:.0f} s "
                    f"({reason}); the conversation is kept: /retry to continue")
            pause = min(delay * (0.5 + random.random()), remaining)
            end = time.monotonic() + pause
            while (left := end - time.monotonic()) > 0:
                self._say(f"reconnecting… next try in {math.ceil(left)} s (attempt "
                          f"{attempt + 1}; giving up in {math.ceil(give_up - time.monotonic())} s)")
                time.sleep(min(1.0, left))
            delay = min(delay * 2, live.backoff_s[1])
        raise AssertionError("unreachable")
