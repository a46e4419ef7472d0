"""Per-connection limits: request rate and sessions, so one client cannot starve the others.

ZeroMQ bounds the rest below us (``MAXMSGSIZE`` cuts a connection that sends an oversized
message, high-water marks bound the queues); these are the limits only the daemon can judge.
A ROUTER names each connection with its own routing id, so "peer" here means one connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgespec.wire.errors import LimitExceeded, RateLimited


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """Socket and per-connection bounds; every one is a ``verifyd`` flag."""

    max_rate: float = 500.0  # requests per second per connection (burst: one second's worth)
    max_sessions_per_peer: int = 16
    max_msg_bytes: int = 4 << 20  # ZMQ_MAXMSGSIZE: a bigger message drops the connection
    hwm: int = 1000  # ZMQ send/receive high-water marks, in messages
    heartbeat_s: float = 2.0  # ZMTP PING interval; a silent peer is dropped after the timeout
    heartbeat_timeout_s: float = 6.0
    forget_idle_peer_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_rate <= 0 or self.max_sessions_per_peer < 1 or self.hwm < 1:
            raise ValueError("rate, sessions per connection and HWM must be positive")
        if self.max_msg_bytes < 4096:
            raise ValueError("max message size below 4 KiB cannot carry a prompt")
        if not 0 < self.heartbeat_s <= self.heartbeat_timeout_s:
            raise ValueError("heartbeat interval must be positive and at most the timeout")


@dataclass(slots=True)
class _Peer:
    allowance: float
    stamp: float
    sessions: set[int] = field(default_factory=set)


class PeerLimiter:
    """A token bucket and a session count per connection; idle connections are forgotten."""

    def __init__(self, limits: PeerLimits):
        self.limits = limits
        self.peers: dict[bytes, _Peer] = {}
        self.refused = 0

    def admit(self, peer: bytes, now: float) -> None:
        """Charge one request to ``peer``; ``RateLimited`` when its bucket is empty."""
        rate = self.limits.max_rate
        state = self.peers.get(peer)
        if state is None:
            state = self.peers[peer] = _Peer(rate, now)
        state.allowance = min(rate, state.allowance + (now - state.stamp) * rate)
        state.stamp = now
        if state.allowance < 1.0:
            self.refused += 1
            raise RateLimited(f"more than {rate:g} requests/s on one connection; slow down")
        state.allowance -= 1.0

    def check_open(self, peer: bytes, sid: int, is_live: Callable[[int], bool]) -> None:
        """Refuse a new session past ``max_sessions_per_peer`` (re-opening one is always fine)."""
        state = self.peers.get(peer)
        if state is None:
            return
        state.sessions = {s for s in state.sessions if is_live(s)}
        if sid not in state.sessions and len(state.sessions) >= self.limits.max_sessions_per_peer:
            self.refused += 1
            raise LimitExceeded(
                f"this connection already holds {len(state.sessions)} sessions "
                f"(the daemon's --max-sessions-per-peer); close one first")

    def opened(self, peer: bytes, sid: int) -> None:
        state = self.peers.get(peer)
        if state is not None:
            state.sessions.add(sid)

    def prune(self, now: float, is_live: Callable[[int], bool]) -> int:
        """Forget connections idle past the limit that hold no live session; returns how many."""
        idle = [p for p, s in self.peers.items()
                if now - s.stamp > self.limits.forget_idle_peer_s
                and not any(is_live(sid) for sid in s.sessions)]
        for p in idle:
            del self.peers[p]
        return len(idle)
