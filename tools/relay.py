"""A loopback TCP relay that delays each direction: a network between two local processes.

These machines' kernels have no netem, so benchmarks and fault tests put this relay between
the client and verifyd. Each direction is a link with its own one-way latency, jitter and
bandwidth: a chunk read at time t is written at max(t + latency + jitter, previous chunk's
time), after the link has clocked out the bytes before it at ``bandwidth`` bytes/s, so bytes
stay in order (TCP would never reorder them) and jitter never overtakes. ``drop()`` resets
every live connection at once (a pulled cable, for fault tests); the relay keeps listening,
so a client that reconnects gets a fresh connection.

    python -m edgespec.tools.relay --upstream 127.0.0.1:5557 --port 6000 --rtt-ms 50 \
        [--jitter-ms 5] [--bandwidth-kbps 1000]     (SIGUSR1 drops every connection)

Loopback only: it refuses to listen on or forward to any other address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass

import click

CHUNK = 65536


@dataclass(frozen=True, slots=True)
class LinkShape:
    """One direction: seconds of latency, up to ``jitter_s`` more (uniform), a bandwidth
    (bytes/s, 0 = unlimited)."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bps: float = 0.0

    @classmethod
    def half_rtt(cls, rtt_ms: float, jitter_ms: float = 0.0, bandwidth_kbps: float = 0.0
                 ) -> LinkShape:
        return cls(rtt_ms / 2000.0, jitter_ms / 1000.0, bandwidth_kbps * 125.0)


def _require_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"the relay is loopback only, not {host!r}")


class _Pipe:
    """One direction of one connection: read, stamp a delivery time, write when due."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 shape: LinkShape, rng: random.Random):
        self.reader, self.writer, self.shape, self.rng = reader, writer, shape, rng
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.free_at = 0.0  # when the link has clocked out everything queued
        self.last_due = 0.0

    def stamp(self, now: float, size: int) -> float:
        """Delivery time of ``size`` bytes read at ``now``: never before the previous one."""
        if self.shape.bandwidth_bps > 0:
            self.free_at = max(now, self.free_at) + size / self.shape.bandwidth_bps
            now = self.free_at
        due = now + self.shape.latency_s + self.rng.uniform(0.0, self.shape.jitter_s)
        self.last_due = max(due, self.last_due)
        return self.last_due

    async def read(self) -> None:
        while data := await self.reader.read(CHUNK):
            await self.queue.put((self.stamp(time.monotonic(), len(data)), data))
        await self.queue.put((self.stamp(time.monotonic(), 0), b""))

    async def write(self) -> None:
        while True:
            due, data = await self.queue.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if not data:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.writer.write(data)
            await self.writer.drain()


class Relay:
    """The relay on its own event-loop thread; ``endpoint`` is what a client connects to."""

    def __init__(self, upstream_host: str, upstream_port: int, up: LinkShape,
                 down: LinkShape, port: int = 0, seed: int = 0):
        _require_loopback(upstream_host)
        self.upstream = (upstream_host, upstream_port)
        self.up, self.down = up, down  # client -> upstream, upstream -> client
        self.rng = random.Random(seed)
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.port: int

    @classmethod
    def symmetric(cls, upstream: str, rtt_ms: float, jitter_ms: float = 0.0,
                  bandwidth_kbps: float = 0.0, port: int = 0) -> Relay:
        """Half the round trip each way; ``upstream`` is ``host:port`` or ``tcp://host:port``."""
        host, _, port_text = upstream.removeprefix("tcp://").rpartition(":")
        shape = LinkShape.half_rtt(rtt_ms, jitter_ms, bandwidth_kbps)
        return cls(host, int(port_text), shape, shape, port)

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _run(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", port))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
                     ) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.transport.abort()
            return
        self.connections += 1
        for writer in (c_writer, u_writer):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._writers.add(writer)
        pipes = (_Pipe(c_reader, u_writer, self.up, self.rng),
                 _Pipe(u_reader, c_writer, self.down, self.rng))
        tasks = [asyncio.ensure_future(f()) for p in pipes for f in (p.read, p.write)]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            for writer in (c_writer, u_writer):
                self._writers.discard(writer)
                writer.transport.abort()

    def _drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # RST, not FIN: the peer sees a broken connection
        for task in list(self._tasks):
            task.cancel()

    def drop(self) -> None:
        """Reset every live connection now; new ones are still accepted."""
        done = threading.Event()

        def drop_now() -> None:
            self._drop()
            done.set()

        self._loop.call_soon_threadsafe(drop_now)
        done.wait(5)

    def close(self) -> None:
        if self._loop.is_running():
            self.drop()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@click.command(context_settings={"show_default": True})
@click.option("--upstream", required=True, help="host:port to forward to (loopback).")
@click.option("--port", type=int, default=0, help="Port to listen on (0: any free one).")
@click.option("--rtt-ms", type=float, default=0.0, help="Round trip added (half each way).")
@click.option("--jitter-ms", type=float, default=0.0, help="Up to this much more each way.")
@click.option("--bandwidth-kbps", type=float, default=0.0, help="Each way; 0 = unlimited.")
def main(upstream: str, port: int, rtt_ms: float, jitter_ms: float,
         bandwidth_kbps: float) -> None:
    """Relay loopback TCP with a delay; SIGUSR1 drops every live connection."""
    relay = Relay.symmetric(upstream, rtt_ms, jitter_ms, bandwidth_kbps, port)
    signal.signal(signal.SIGUSR1, lambda *_: relay.drop())
    click.echo(f"relay on {relay.endpoint} -> {upstream}, rtt {rtt_ms} ms", err=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        relay.close()


if __name__ == "__main__":
    main()
