"""Per-connection limits and session epochs, with a hand-driven clock."""

from __future__ import annotations

import pytest
from edgespec.verify_daemon.epochs import EpochGuard
from edgespec.verify_daemon.limits import PeerLimiter, PeerLimits
from edgespec.wire.errors import LimitExceeded, RateLimited, StaleEpoch
from edgespec.wire.protocol import epoch_is_older


def test_rate_limit_refuses_a_burst_and_refills_with_time():
    limiter = PeerLimiter(PeerLimits(max_rate=10))
    for _ in range(10):
        limiter.admit(b"a", 0.0)
    with pytest.raises(RateLimited):
        limiter.admit(b"a", 0.0)
    limiter.admit(b"b", 0.0)  # another connection is not affected
    limiter.admit(b"a", 0.2)  # two requests' worth refilled


def test_sessions_per_connection_count_only_live_ones():
    limiter = PeerLimiter(PeerLimits(max_sessions_per_peer=2))
    live = {1, 2}
    limiter.admit(b"a", 0.0)
    for sid in live:
        limiter.check_open(b"a", sid, live.__contains__)
        limiter.opened(b"a", sid)
    limiter.check_open(b"a", 2, live.__contains__)  # re-opening is fine
    with pytest.raises(LimitExceeded):
        limiter.check_open(b"a", 3, live.__contains__)
    live.discard(1)
    limiter.check_open(b"a", 3, live.__contains__)


def test_idle_connections_are_forgotten():
    limiter = PeerLimiter(PeerLimits(forget_idle_peer_s=10))
    limiter.admit(b"a", 0.0)
    assert limiter.prune(5.0, lambda sid: False) == 0
    assert limiter.prune(11.0, lambda sid: False) == 1 and not limiter.peers


def test_older_epochs_are_refused_with_wraparound():
    assert epoch_is_older(1, 2) and not epoch_is_older(2, 1) and not epoch_is_older(3, 3)
    assert epoch_is_older(0xFFFF, 0)  # 0 came after 65535
    guard = EpochGuard()
    guard.opened(7, 3)
    guard.check(7, 3)
    guard.check(7, 4)
    with pytest.raises(StaleEpoch):
        guard.check(7, 2)
    guard.check(8, 0)  # unknown sessions are the engine's business
    guard.prune(lambda sid: False)
    guard.check(7, 0)
