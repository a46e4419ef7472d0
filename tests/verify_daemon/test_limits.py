"""Per-connection limits and session epochs, with a hand-driven clock."""

from __future__ import annotations

import pytest
from edgespec.verify_daemon.epochs import EpochGuard
from edgespec.verify_daemon.limits import PeerLimiter, PeerLimits, address_key
from edgespec.verify_daemon.session import Session
from edgespec.wire.codec import SamplingParams
from edgespec.wire.errors import LimitExceeded, Overloaded, RateLimited, StaleEpoch
from edgespec.wire.protocol import epoch_is_older


def test_rate_limit_refuses_a_burst_and_refills_with_time():
    limiter = PeerLimiter(PeerLimits(max_rate=10))
    for _ in range(10):
        limiter.admit(b"a", 0.0)
    with pytest.raises(RateLimited):
        limiter.admit(b"a", 0.0)
    limiter.admit(b"b", 0.0)  # another connection is not affected
    limiter.admit(b"a", 0.2)  # two requests' worth refilled


def _session(sid: int, peer: bytes, owner: str = "", address: str = "", prompt: int = 2
             ) -> Session:
    return Session(sid, peer, list(range(prompt)), SamplingParams(), 8, prompt, 0.0,
                   owner=owner, address=address)


def test_sessions_are_bounded_per_connection_key_and_address():
    limiter = PeerLimiter(PeerLimits(max_sessions_per_peer=2, max_sessions_per_key=3,
                                     max_sessions_per_address=4))
    live = {1: _session(1, b"a", "k", "10.0.0.1"), 2: _session(2, b"a", "k", "10.0.0.1")}
    limiter.check_open(b"a", 2, "k", "10.0.0.1", 2, live, 100)  # re-opening is fine
    with pytest.raises(LimitExceeded, match="connection"):
        limiter.check_open(b"a", 3, "k", "10.0.0.1", 2, live, 100)
    live[3] = _session(3, b"b", "k", "10.0.0.1")
    with pytest.raises(LimitExceeded, match="client key"):  # a new connection, the same key
        limiter.check_open(b"c", 4, "k", "10.0.0.1", 2, live, 100)
    live[4] = _session(4, b"c", "j", "10.0.0.1")
    with pytest.raises(LimitExceeded, match="address"):  # new key, new connection, same host
        limiter.check_open(b"d", 5, "i", "10.0.0.1", 2, live, 100)
    limiter.check_open(b"d", 5, "i", "10.0.0.2", 2, live, 100)
    del live[1]  # a closed session no longer counts
    limiter.check_open(b"a", 6, "k", "10.0.0.1", 2, live, 100)


def test_prefill_queued_per_address_is_bounded():
    limiter = PeerLimiter(PeerLimits(max_prefill_per_address=100))
    live = {1: _session(1, b"a", address="10.0.0.1", prompt=81)}  # 80 still to prefill
    limiter.check_open(b"a", 2, "", "10.0.0.1", 20, live, 100)
    with pytest.raises(Overloaded) as busy:
        limiter.check_open(b"a", 2, "", "10.0.0.1", 21, live, 100)
    assert busy.value.retry_after_ms == 100
    limiter.check_open(b"b", 2, "", "10.0.0.2", 100, live, 100)  # another address
    with pytest.raises(LimitExceeded):  # could never be served
        limiter.check_open(b"b", 3, "", "10.0.0.2", 101, live, 100)


def test_ipv6_addresses_count_per_64():
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert address_key("127.0.0.2") == "127.0.0.2"


def test_rate_buckets_are_bounded_and_gone_connections_forgotten():
    limiter = PeerLimiter(PeerLimits(max_connections=4))
    for i in range(20):
        limiter.admit(b"p%d" % i, float(i))
    assert len(limiter.peers) == 8 and b"p19" in limiter.peers
    assert limiter.prune(20.0, lambda peer: peer == b"p19") == 1


def test_idle_connections_are_forgotten():
    limiter = PeerLimiter(PeerLimits(forget_idle_peer_s=10))
    limiter.admit(b"a", 0.0)
    assert limiter.prune(5.0, lambda peer: False) == 0
    assert limiter.prune(11.0, lambda peer: False) == 1 and not limiter.peers


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


def test_epoch_table_is_bounded_by_live_sessions():
    live = {1, 2}
    guard = EpochGuard(max_entries=4, is_live=live.__contains__)
    for sid in range(1, 1000):  # churned sessions: opened, then gone
        guard.opened(sid, 5)
    assert len(guard.epochs) <= 4 and {1, 2} <= set(guard.epochs)
