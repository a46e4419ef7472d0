"""The delay relay over real loopback sockets: delay applied, order kept, drop works."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from edgespec.tools.relay import LinkShape, Relay


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback echo server, one thread per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port
    server.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def connect(relay: Relay) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_round_trip_is_delayed_by_both_directions(echo_port: int):
    with Relay.symmetric(f"127.0.0.1:{echo_port}", rtt_ms=120) as relay, connect(relay) as s:
        s.sendall(b"ping")
        t0 = time.monotonic()
        assert recv_exactly(s, 4) == b"ping"
        first = time.monotonic() - t0
        t0 = time.monotonic()
        s.sendall(b"pong")
        assert recv_exactly(s, 4) == b"pong"
        assert min(first, time.monotonic() - t0) >= 0.118


def test_each_direction_has_its_own_latency(echo_port: int):
    up, down = LinkShape(latency_s=0.08), LinkShape()
    with Relay("127.0.0.1", echo_port, up, down) as relay, connect(relay) as s:
        t0 = time.monotonic()
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
        assert time.monotonic() - t0 >= 0.078


def test_jitter_never_reorders_bytes(echo_port: int):
    shape = LinkShape(latency_s=0.002, jitter_s=0.02)
    with Relay("127.0.0.1", echo_port, shape, shape, seed=3) as relay, connect(relay) as s:
        sent = b"".join(i.to_bytes(4, "big") for i in range(2000))
        for i in range(0, len(sent), 40):  # many small writes, each with its own jitter
            s.sendall(sent[i:i + 40])
        assert recv_exactly(s, len(sent)) == sent


def test_bandwidth_cap_spreads_a_burst(echo_port: int):
    shape = LinkShape(bandwidth_bps=200_000)  # 20 kB takes 0.1 s each way
    with Relay("127.0.0.1", echo_port, shape, shape) as relay, connect(relay) as s:
        t0 = time.monotonic()
        s.sendall(bytes(20_000))
        assert len(recv_exactly(s, 20_000)) == 20_000
        assert time.monotonic() - t0 >= 0.1


def test_drop_resets_live_connections_and_keeps_listening(echo_port: int):
    with Relay.symmetric(f"127.0.0.1:{echo_port}", rtt_ms=0) as relay:
        with connect(relay) as s:
            s.sendall(b"a")
            assert recv_exactly(s, 1) == b"a"
            relay.drop()
            try:
                s.sendall(b"b")
                reply = s.recv(1)  # a reset raises; a closed socket reads EOF
            except (ConnectionResetError, BrokenPipeError):
                reply = b""
            assert reply == b""
        with connect(relay) as s2:
            s2.sendall(b"c")
            assert recv_exactly(s2, 1) == b"c"
        assert relay.connections == 2


def test_refuses_anything_but_loopback():
    with pytest.raises(ValueError):
        Relay("10.0.0.1", 5557, LinkShape(), LinkShape())
