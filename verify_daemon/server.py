"""The ROUTER front end: take every waiting request, run one engine step, reply, expire.

Like zguide's ``mdbroker.py``: one socket, one loop, and a bad frame is logged and answered
with a typed ERROR, never allowed to take the daemon down or touch another session. Drafts
and OPENs are queued in the engine, so all the sessions waiting at a step are verified in one
forward pass; everything else is answered as soon as it is read.

The forward pass runs on a worker thread while this loop keeps reading the socket: HELLO,
PING and bad input are answered at once, off the model's path, and OPEN, DRAFT and CLOSE
(which change the engine's state) wait, in order, for the step to end. ``connections.py``
watches the connections underneath (caps, buffered bytes, who is gone).
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
from edgespec.verify_daemon.connections import Connections
from edgespec.verify_daemon.engine import Engine, Reply
from edgespec.verify_daemon.epochs import EpochGuard
from edgespec.verify_daemon.limits import PeerLimiter, PeerLimits
from edgespec.verify_daemon.outbox import Outbox
from edgespec.wire import curve
from edgespec.wire.codec import (
    Close,
    Draft,
    Envelope,
    Error,
    Message,
    Open,
    Opened,
    decode,
    encode,
    peek_header,
)
from edgespec.wire.errors import ErrorCode, WireError
from edgespec.wire.protocol import Limits

if TYPE_CHECKING:
    from edgespec.verify_daemon.metrics import Metrics

log = logging.getLogger(__name__)

POLL_MS = 200
OUTBOX_POLL_MS = 5  # while replies wait for a peer's queue to drain, retry this often
OUTBOX_BYTES_PER_PEER = 1 << 20  # above the largest reply (a VOCAB chunk, under 512 KiB)
EXPIRE_EVERY_S = 5.0
STATS_EVERY_S = 1.0
MAX_READ_PER_STEP = 4096  # requests read before the next step, so a flood cannot stall it
MAX_DEFERRED = 4096  # OPEN/DRAFT/CLOSE read during a step; past it the socket's HWM holds them
ZAP_DOMAIN = b"edgespec"  # set even without CURVE: libzmq then refuses ZMTP 1.0/2.0 greetings


@dataclass(slots=True)
class _Deferred:
    """A request that changes engine state, read while a step ran on the worker thread."""

    peer: bytes
    envelope: Envelope
    owner: str
    address: str


class Server:
    def __init__(self, engine: Engine, endpoint: str, limits: Limits | None = None,
                 peer_limits: PeerLimits | None = None, keys_dir: Path | None = None,
                 allow_dir: Path | None = None):
        self.engine = engine
        self.limits = limits or Limits(max_draft_tokens=64)
        self.peer_limits = peer_limits or PeerLimits()
        self.limiter = PeerLimiter(self.peer_limits)
        self.epochs = EpochGuard(max(1024, 4 * engine.config.max_sessions), self._is_live)
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        # With keys, the authenticator starts in this Context before the socket binds.
        self.curve = curve.start_curve_server(self.context, keys_dir, allow_dir) \
            if keys_dir is not None else None
        self.socket = self.context.socket(zmq.ROUTER)
        _set_socket_bounds(self.socket, self.peer_limits, plain=self.curve is None)
        self.connections = Connections(self.socket, self.peer_limits)
        engine.scheduler.is_orphan = lambda session: self.connections.gone(session.peer)
        if self.curve is not None:
            curve.bind_curve(self.socket, endpoint, self.curve)
        else:
            self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.outbox = Outbox(self.socket, self.peer_limits.hwm, OUTBOX_BYTES_PER_PEER,
                             self.peer_limits.heartbeat_timeout_s)
        self.requests = 0
        self.errors = 0
        self.metrics: Metrics | None = None  # verifyd --metrics-port: fed after each step
        self.deferred: list[_Deferred] = []
        self.stepping = False
        self._wake_r, self._wake_w = os.pipe()  # the worker says "step done" through it
        self._worker = ThreadPoolExecutor(1, "verifyd-step", initializer=_same_torch_threads,
                                          initargs=(_torch_threads(),))

    def serve_forever(self, ready_message: bool = True, stats_file: str = "") -> None:
        self.connections.start()
        if ready_message:
            # Tests and scripts wait for this exact line before connecting.
            print(f"verifyd ready on {self.endpoint}", flush=True)
        expire_every = min(EXPIRE_EVERY_S, self.engine.config.session_idle_s / 2)
        next_expire = time.monotonic() + expire_every
        next_stats = time.monotonic()
        try:
            while True:
                if self.socket.poll(0 if self.engine.has_work else self._idle_poll_ms):
                    self.serve_ready()
                self.outbox.flush()
                if self.engine.has_work:
                    self.gather(self.engine.config.batch_window_ms / 1000.0)
                    self.run_step()
                now = time.monotonic()
                if now >= next_expire:
                    dropped = self.engine.expire(now)
                    if dropped:
                        log.info("expired %d idle sessions", dropped)
                    self.limiter.prune(now, self.connections.gone)
                    self.epochs.prune(self._is_live)
                    next_expire = now + expire_every
                if stats_file and now >= next_stats:
                    write_stats(stats_file, self.stats())
                    next_stats = now + STATS_EVERY_S
        finally:
            if stats_file:
                write_stats(stats_file, self.stats())
            self._worker.shutdown(wait=True)
            self.connections.stop()
            self.socket.close(0)
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self.curve is not None:
                self.curve.stop()

    def stats(self) -> dict[str, object]:
        c = self.connections
        return {**self.engine.stats(), "connections": c.count, "connections_peak": c.peak,
                "connections_refused": c.refused, "connections_cut_backlog": c.cut_backlog,
                "sessions_reclaimed": self.engine.scheduler.reclaimed,
                "epochs_tracked": len(self.epochs.epochs), "rate_buckets": len(self.limiter.peers),
                "requests": self.requests, "errors": self.errors,
                "replies_delayed": self.outbox.delayed, "replies_dropped": self.outbox.dropped}

    @property
    def _idle_poll_ms(self) -> int:
        return OUTBOX_POLL_MS if self.outbox.pending else POLL_MS

    def _is_live(self, sid: int) -> bool:
        return sid in self.engine.sessions

    def serve_ready(self) -> None:
        """Read every request already queued, oldest first (bounded per step)."""
        for _ in range(MAX_READ_PER_STEP):
            if self.stepping and len(self.deferred) >= MAX_DEFERRED:
                return  # the rest waits in the socket, under its high-water mark
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [part.bytes for part in parts]
            address = self.connections.seen(frames[0], parts[-1]) if frames else ""
            owner = client_key(parts[-1]) if self.curve is not None else ""
            self.serve_one(frames, owner, address)

    def gather(self, window_s: float) -> None:
        """Wait up to ``window_s`` for sessions that are not waiting yet: clients answered by
        the last step send their next draft within a moment, and a step that left without
        them would split the users into two half-size batches taking turns."""
        deadline = time.monotonic() + window_s
        while self.engine.waiting_count < len(self.engine.sessions):
            remaining_ms = (deadline - time.monotonic()) * 1000.0
            if remaining_ms <= 0 or not self.socket.poll(max(1, int(remaining_ms))):
                return
            self.serve_ready()

    def run_step(self) -> None:
        """One engine step on the worker thread; meanwhile keep answering what needs no
        model, then send the step's replies and queue what arrived for the next one."""
        started = time.perf_counter()
        future = self._worker.submit(self._step)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self.stepping = True
        try:
            done = False
            while not done:  # the worker's byte, not future.done(): that is set a moment later
                ready = dict(poller.poll(self._idle_poll_ms))
                if self.socket in ready:
                    self.serve_ready()
                self.outbox.flush()
                if self._wake_r in ready:
                    done = bool(os.read(self._wake_r, 64))
        finally:
            self.stepping = False
        try:
            replies = future.result()  # returns at once: the step has ended
        except Exception:  # a bug of ours: fail the waiting requests, keep serving
            log.exception("internal error in a verification step")
            replies = self.engine.fail_waiting("internal error in verifyd (see its log)")
        if self.metrics is not None:
            self.metrics.stepped(time.perf_counter() - started)
        self._send_replies(replies)
        deferred, self.deferred = self.deferred, []
        for item in deferred:
            self._submit(item.peer, item.envelope, item.owner, item.address)

    def _step(self) -> list[Reply]:
        try:
            return self.engine.step()
        finally:
            os.write(self._wake_w, b"x")

    def _send_replies(self, replies: list[Reply]) -> None:
        for reply in replies:
            self._observe(reply.msg)
            self._answered(reply.peer, reply.session, reply.epoch, reply.msg)
            self.reply(reply.peer, encode(reply.msg, reply.session, reply.seq, reply.epoch))

    def serve_one(self, frames: list[bytes], owner: str = "", address: str = "") -> None:
        """Answer one request; ``owner`` is the sender's CURVE key (sessions are bound to it),
        ``address`` its source address."""
        if len(frames) < 2:
            return  # no routing id + message: nothing to answer
        peer, body = frames[0], frames[1:]
        self.requests += 1
        if body[0] == b"" and peek_header(body[1:]) is not None:  # a REQ's delimiter
            self.errors += 1
            error = Error(ErrorCode.UNSUPPORTED, "verifyd speaks to ZeroMQ DEALER sockets "
                          "only (this message came from a REQ socket)")
            self.reply(peer, [b"", *encode(error, *_address_of(body[1:]))])
            return
        try:
            self.limiter.admit(peer, time.monotonic())
            envelope = decode(body, self.limits)
            self.epochs.check(envelope.session, envelope.epoch)
        except WireError as exc:
            self._refuse(peer, body, exc)
            return
        if isinstance(envelope.msg, Open | Draft | Close) and self.stepping:
            self.deferred.append(_Deferred(peer, envelope, owner, address))
            return
        self._submit(peer, envelope, owner, address)

    def _submit(self, peer: bytes, envelope: Envelope, owner: str, address: str) -> None:
        """Hand a decoded request to the engine; answer it now unless it was queued."""
        session, seq, epoch = envelope.session, envelope.seq, envelope.epoch
        try:
            if isinstance(envelope.msg, Open):
                self.limiter.check_open(peer, session, owner, address, len(envelope.msg.tokens),
                                        self.engine.sessions,
                                        self.engine.config.retry_after_ms)
            reply = self.engine.submit(peer, session, seq, envelope.msg, owner, epoch, address)
        except WireError as exc:
            self._refuse(peer, [], exc, (session, seq, epoch))
            return
        except Exception:  # a bug of ours must not take every other user down
            self.errors += 1
            log.exception("internal error serving peer %s", peer.hex())
            reply = Error(ErrorCode.INTERNAL, "internal error in verifyd (see its log)")
        finally:
            self._send_replies(self.engine.superseded)
            self.engine.superseded = []
        if reply is None:  # queued: the next step answers it, under this epoch
            return
        self._observe(reply)
        self._answered(peer, session, epoch, reply)
        self.reply(peer, encode(reply, session, seq, epoch))

    def _refuse(self, peer: bytes, body: list[bytes], exc: WireError,
                address: tuple[int, int, int] | None = None) -> None:
        """A typed ERROR, addressed to whatever header we can still read."""
        self.errors += 1
        log.info("peer %s: %s: %s", peer.hex(), type(exc).__name__, exc)
        error = Error(exc.code, str(exc), getattr(exc, "retry_after_ms", 0))
        self._observe(error)
        self.reply(peer, encode(error, *(address or _address_of(body))))

    def _observe(self, reply: Message) -> None:
        """Count an ERROR reply by code for ``--metrics-port``."""
        if self.metrics is not None:
            self.metrics.answered(reply)

    def _answered(self, peer: bytes, session: int, epoch: int, reply: Message) -> None:
        """An OPEN that succeeded fixes the session's epoch."""
        if isinstance(reply, Opened):
            self.epochs.opened(session, epoch)

    def reply(self, peer: bytes, frames: list[bytes]) -> None:
        """Never block on one client: a reply its queue cannot take yet waits in the outbox;
        a gone peer, or one that stopped reading, loses only its own replies."""
        self.outbox.send(peer, frames)


def _address_of(body: list[bytes]) -> tuple[int, int, int]:
    """(session, seq, epoch) from whatever header an undecodable message still has."""
    header = peek_header(body)
    return (header.session, header.seq, header.epoch) if header else (0, 0, 0)


def _set_socket_bounds(socket: zmq.Socket, limits: PeerLimits, plain: bool = True) -> None:
    """Bounded frames and queues, handshakes and heartbeats; replies to gone peers visible.

    ``ZMQ_MAXMSGSIZE`` bounds each frame (libzmq drops the connection past it); frames per
    message and bytes per connection are bounded by ``connections.py``. With ZAP on, libzmq
    refuses ZMTP 1.0 and 2.0 peers (an HTTP request line, a single byte, an old greeting),
    which would never get a handshake timeout or heartbeats: CURVE turns it on, and a plain
    socket gets a ZAP domain, which changes nothing else without a ZAP handler (with one,
    the authenticator's "*" domain would no longer match). ``ROUTER_HANDOVER`` stays off:
    a connection presenting a routing id already in use is refused rather than handed the
    other connection's replies and sessions (our clients never set one; libzmq's own ids
    are guessable).
    """
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, limits.max_msg_bytes)
    socket.setsockopt(zmq.SNDHWM, limits.hwm)
    socket.setsockopt(zmq.RCVHWM, limits.hwm)
    if plain:
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    socket.setsockopt(zmq.HANDSHAKE_IVL, int(limits.handshake_timeout_s * 1000))
    socket.setsockopt(zmq.ROUTER_HANDOVER, 0)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.setsockopt(zmq.HEARTBEAT_IVL, int(limits.heartbeat_s * 1000))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(limits.heartbeat_timeout_s * 1000))
    socket.setsockopt(zmq.HEARTBEAT_TTL, int(limits.heartbeat_timeout_s * 1000))


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _same_torch_threads(threads: int) -> None:
    """The step thread uses the threads the runner was given (OpenMP keeps them per thread)."""
    import torch

    torch.set_num_threads(threads)


def write_stats(path: str, stats: dict[str, object]) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


def client_key(frame: zmq.Frame) -> str:
    """The Z85 public key the ZAP handler authenticated this message's connection with."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:  # not a CURVE connection: no owner to bind to
        return ""
