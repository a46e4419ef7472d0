"""Per-peer limits: request rate, sessions and queued prefill, so no one can starve the others.

Three notions of "peer", because each alone is easy to multiply: a *connection* (the ROUTER's
routing id; a client opens as many as it likes), a *client key* (the CURVE key the handshake
authenticated; a stranger can make new ones only where no allow-list is set) and a *source
address* (an IPv4 address, or an IPv6 /64, which one machine usually holds whole). Sessions are
bounded per each; prefill tokens queued per address. ZeroMQ and ``connections.py`` bound the
rest below us (frame size, queues, connection counts, handshakes, buffered bytes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edgespec.verify_daemon.session import Session
from edgespec.wire.errors import LimitExceeded, Overloaded, RateLimited
from edgespec.wire.protocol import Limits

# The largest frame a legitimate client sends: a DRAFT's sparse q (ids or probabilities, one
# int32/float32 each for up to max_draft × max_q_support entries), above a full prompt.
_WIRE = Limits()
LARGEST_FRAME = max(4 * _WIRE.max_draft_tokens * _WIRE.max_q_support,
                    4 * _WIRE.max_prompt_tokens, _WIRE.max_text_bytes)


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """Socket, connection and per-peer bounds; every one is a ``verifyd`` flag."""

    max_rate: float = 500.0  # requests per second per connection (burst: one second's worth)
    max_sessions_per_peer: int = 16  # per connection
    max_sessions_per_key: int = 16  # per CURVE client key
    max_sessions_per_address: int = 16  # per source address (IPv6: per /64)
    max_prefill_per_address: int = 16_384  # prompt tokens one address may have waiting
    max_msg_bytes: int = LARGEST_FRAME  # ZMQ_MAXMSGSIZE (per frame): a bigger one drops the link
    max_backlog_bytes: int = 4 << 20  # bytes one connection may have sent that we have not read
    hwm: int = 100  # ZMQ send/receive high-water marks, in messages per connection
    max_connections: int = 512
    max_connections_per_address: int = 32
    handshake_timeout_s: float = 10.0  # ZMQ_HANDSHAKE_IVL: a greeting not done by then is dropped
    heartbeat_s: float = 2.0  # ZMTP PING interval; a silent peer is dropped after the timeout
    heartbeat_timeout_s: float = 6.0
    forget_idle_peer_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_rate <= 0 or self.hwm < 1 or min(
                self.max_sessions_per_peer, self.max_sessions_per_key,
                self.max_sessions_per_address, self.max_connections,
                self.max_connections_per_address) < 1:
            raise ValueError("rate, session and connection limits and the HWM must be positive")
        if self.max_msg_bytes < LARGEST_FRAME:
            raise ValueError(f"max message size below {LARGEST_FRAME} bytes would drop a "
                             "legitimate client (a full DRAFT q frame)")
        if self.max_backlog_bytes < 2 * self.max_msg_bytes:
            raise ValueError("the per-connection backlog must hold at least two largest frames")
        if self.max_prefill_per_address < 1:
            raise ValueError("max prefill per address must be positive")
        if not 0 < self.handshake_timeout_s <= 600:
            raise ValueError("handshake timeout must be in (0, 600] seconds")
        if not 0 < self.heartbeat_s <= self.heartbeat_timeout_s:
            raise ValueError("heartbeat interval must be positive and at most the timeout")


def address_key(host: str) -> str:
    """What one source is: an IPv4 address, or the /64 an IPv6 address belongs to (a machine
    is usually handed a whole /64, so counting single IPv6 addresses would bound nothing)."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0].strip("[]"))
    except ValueError:
        return host[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(slots=True)
class _Bucket:
    allowance: float
    stamp: float


class PeerLimiter:
    """A token bucket per connection (bounded table), and the session and prefill checks."""

    def __init__(self, limits: PeerLimits):
        self.limits = limits
        self.peers: dict[bytes, _Bucket] = {}
        self.max_peers = 2 * limits.max_connections  # buckets of gone connections linger a while
        self.refused = 0

    def admit(self, peer: bytes, now: float) -> None:
        """Charge one request to ``peer``; ``RateLimited`` when its bucket is empty."""
        rate = self.limits.max_rate
        state = self.peers.get(peer)
        if state is None:
            if len(self.peers) >= self.max_peers:  # forget the longest-silent connection
                del self.peers[min(self.peers, key=lambda p: self.peers[p].stamp)]
            state = self.peers[peer] = _Bucket(rate, now)
        state.allowance = min(rate, state.allowance + (now - state.stamp) * rate)
        state.stamp = now
        if state.allowance < 1.0:
            self.refused += 1
            raise RateLimited(f"more than {rate:g} requests/s on one connection; slow down")
        state.allowance -= 1.0

    def check_open(self, peer: bytes, sid: int, owner: str, address: str, prompt_tokens: int,
                   sessions: Mapping[int, Session], retry_after_ms: int) -> None:
        """Refuse a new session past the per-connection, per-key and per-address bounds
        (``LimitExceeded``: close one first), and an OPEN that would queue more prefill than
        one address may (``Overloaded``: retry once it has been served)."""
        lim = self.limits
        others = [s for s in sessions.values() if s.sid != sid]
        if sid not in sessions:
            for count, most, what, flag in (
                    (sum(s.peer == peer for s in others), lim.max_sessions_per_peer,
                     "this connection", "--max-sessions-per-peer"),
                    (sum(s.owner == owner for s in others) if owner else 0,
                     lim.max_sessions_per_key, "this client key", "--max-sessions-per-key"),
                    (sum(s.address == address for s in others) if address else 0,
                     lim.max_sessions_per_address, f"address {address}",
                     "--max-sessions-per-address")):
                if count >= most:
                    self.refused += 1
                    raise LimitExceeded(f"{what} already holds {count} sessions (the daemon's "
                                        f"{flag}); close one first")
        if not address:
            return
        if prompt_tokens > lim.max_prefill_per_address:
            raise LimitExceeded(f"{prompt_tokens} prompt tokens exceed the daemon's "
                                f"--max-prefill-per-address of {lim.max_prefill_per_address}")
        queued = sum(s.to_prefill for s in others if s.address == address)
        if queued + prompt_tokens > lim.max_prefill_per_address:
            self.refused += 1
            raise Overloaded(f"address {address} already has {queued} prompt tokens waiting "
                             f"to be prefilled (the daemon's --max-prefill-per-address); "
                             "retry later", retry_after_ms=retry_after_ms)

    def prune(self, now: float, is_gone: Callable[[bytes], bool]) -> int:
        """Forget the buckets of connections that are gone or idle past the limit."""
        stale = [p for p, s in self.peers.items()
                 if is_gone(p) or now - s.stamp > self.limits.forget_idle_peer_s]
        for p in stale:
            del self.peers[p]
        return len(stale)
