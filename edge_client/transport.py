"""The client's DEALER link to verifyd: request ids, timeouts and typed errors.

Like zguide's asynchronous Majordomo client, sending and receiving are separate calls, so
the speculative loop can keep drafting while a verification is in flight. Replies carry the
request's sequence number; a reply to anything but the request we wait for is stale and
dropped.
"""

from __future__ import annotations

import secrets
import time
from typing import TypeVar

import zmq
from edgespec.wire.codec import Error, Hello, Message, Welcome, decode, encode
from edgespec.wire.errors import ErrorCode, WireError, error_for_code
from edgespec.wire.protocol import Limits

M = TypeVar("M", bound=Message)


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


class Link:
    """One DEALER connection; owns its socket."""

    def __init__(self, endpoint: str, timeout_s: float = 30.0, limits: Limits | None = None,
                 context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.limits = limits or Limits()
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, 4 * self.limits.max_frame_bytes)
        self.socket.connect(endpoint)
        self._seq = secrets.randbelow(1 << 31)
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        self.socket.close(0)

    def send(self, msg: Message, session: int = 0) -> int:
        """Send ``msg``; return the request id to wait for."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        frames = encode(msg, session, self._seq)
        self.bytes_sent += sum(len(f) for f in frames)
        self.socket.send_multipart(frames, copy=False)
        return self._seq

    def poll(self, seq: int) -> Message | None:
        """The reply to ``seq`` if it has arrived, else None; never blocks."""
        return self._receive(seq, timeout_ms=0)

    def wait(self, seq: int, timeout_s: float | None = None) -> Message:
        """Block until the reply to ``seq``; raise the daemon's error as a typed ``WireError``."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise DaemonTimeout(f"no reply from {self.endpoint} within {self.timeout_s:.0f} s")
            reply = self._receive(seq, remaining_ms)
            if reply is not None:
                return reply

    def request(self, msg: Message, session: int = 0, timeout_s: float | None = None) -> Message:
        return self.wait(self.send(msg, session), timeout_s)

    def hello(self, fingerprint: bytes, name: str = "edgespec") -> Welcome:
        return expect(self.request(Hello(fingerprint, name)), Welcome)

    def _receive(self, seq: int, timeout_ms: int) -> Message | None:
        while self.socket.poll(timeout_ms):
            frames = self.socket.recv_multipart()
            self.bytes_received += sum(len(f) for f in frames)
            envelope = decode(frames, self.limits)
            if envelope.seq != seq:
                continue  # a late reply to a request we gave up on
            if isinstance(envelope.msg, Error):
                raise error_for_code(envelope.msg.code, envelope.msg.message,
                                     envelope.msg.retry_after_ms)
            return envelope.msg
        return None
