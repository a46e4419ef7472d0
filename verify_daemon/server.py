"""The ROUTER front end: take every waiting request, run one engine step, reply, expire.

Like zguide's ``mdbroker.py``: one socket, one loop, and a bad frame is logged and answered
with a typed ERROR, never allowed to take the daemon down or touch another session. Drafts
and OPENs are queued in the engine, so all the sessions waiting at a step are verified in one
forward pass; everything else is answered as soon as it is read.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path

import zmq
from edgespec.verify_daemon.engine import Engine
from edgespec.verify_daemon.epochs import EpochGuard
from edgespec.verify_daemon.limits import PeerLimiter, PeerLimits
from edgespec.wire import curve
from edgespec.wire.codec import Error, Message, Open, Opened, decode, encode, peek_header
from edgespec.wire.errors import ErrorCode, WireError
from edgespec.wire.protocol import Limits

log = logging.getLogger(__name__)

POLL_MS = 200
EXPIRE_EVERY_S = 5.0
STATS_EVERY_S = 1.0
MAX_READ_PER_STEP = 4096  # requests read before the next step, so a flood cannot stall it


class Server:
    def __init__(self, engine: Engine, endpoint: str, limits: Limits | None = None,
                 peer_limits: PeerLimits | None = None, keys_dir: Path | None = None,
                 allow_dir: Path | None = None):
        self.engine = engine
        self.limits = limits or Limits(max_draft_tokens=64)
        self.peer_limits = peer_limits or PeerLimits()
        self.limiter = PeerLimiter(self.peer_limits)
        self.epochs = EpochGuard()
        self.queued_epochs: dict[tuple[int, int], int] = {}  # (session, seq) -> request epoch
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        # With keys, the authenticator starts in this Context before the socket binds.
        self.curve = curve.start_curve_server(self.context, keys_dir, allow_dir) \
            if keys_dir is not None else None
        self.socket = self.context.socket(zmq.ROUTER)
        _set_socket_bounds(self.socket, self.peer_limits)
        if self.curve is not None:
            curve.bind_curve(self.socket, endpoint, self.curve)
        else:
            self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests = 0
        self.errors = 0

    def serve_forever(self, ready_message: bool = True, stats_file: str = "") -> None:
        if ready_message:
            # Tests and scripts wait for this exact line before connecting.
            print(f"verifyd ready on {self.endpoint}", flush=True)
        expire_every = min(EXPIRE_EVERY_S, self.engine.config.session_idle_s / 2)
        next_expire = time.monotonic() + expire_every
        next_stats = time.monotonic()
        try:
            while True:
                if self.socket.poll(0 if self.engine.has_work else POLL_MS):
                    self.serve_ready()
                if self.engine.has_work:
                    self.gather(self.engine.config.batch_window_ms / 1000.0)
                    self.run_step()
                now = time.monotonic()
                if now >= next_expire:
                    dropped = self.engine.expire(now)
                    if dropped:
                        log.info("expired %d idle sessions", dropped)
                    self.limiter.prune(now, self._is_live)
                    self.epochs.prune(self._is_live)
                    self.queued_epochs = {key: e for key, e in self.queued_epochs.items()
                                          if self._is_live(key[0])}
                    next_expire = now + expire_every
                if stats_file and now >= next_stats:
                    write_stats(stats_file, self.engine.stats())
                    next_stats = now + STATS_EVERY_S
        finally:
            if stats_file:
                write_stats(stats_file, self.engine.stats())
            self.socket.close(0)
            if self.curve is not None:
                self.curve.stop()

    def _is_live(self, sid: int) -> bool:
        return sid in self.engine.sessions

    def serve_ready(self) -> None:
        """Read every request already queued, oldest first (bounded per step)."""
        for _ in range(MAX_READ_PER_STEP):
            try:
                if self.curve is None:  # plain bytes: no key to bind sessions to
                    frames, owner = self.socket.recv_multipart(zmq.NOBLOCK), ""
                else:  # frames, to read the key the handshake authenticated
                    parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    frames, owner = [part.bytes for part in parts], client_key(parts[-1])
            except zmq.Again:
                return
            self.serve_one(frames, owner)

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
        try:
            replies = self.engine.step()
        except Exception:  # a bug of ours: fail the waiting requests, keep serving
            log.exception("internal error in a verification step")
            replies = self.engine.fail_waiting("internal error in verifyd (see its log)")
        for peer, session, seq, msg in replies:
            epoch = self.queued_epochs.pop((session, seq), 0)
            self._answered(peer, session, epoch, msg)
            self.reply(peer, encode(msg, session, seq, epoch))

    def serve_one(self, frames: list[bytes], owner: str = "") -> None:
        """Answer one request; ``owner`` is the sender's CURVE key (sessions are bound to it)."""
        if len(frames) < 2:
            return  # no routing id + message: nothing to answer
        peer, body = frames[0], frames[1:]
        self.requests += 1
        envelope = None
        try:
            self.limiter.admit(peer, time.monotonic())
            envelope = decode(body, self.limits)
            self.epochs.check(envelope.session, envelope.epoch)
            if isinstance(envelope.msg, Open):
                self.limiter.check_open(peer, envelope.session, self._is_live)
            reply = self.engine.submit(peer, envelope.session, envelope.seq, envelope.msg,
                                       owner)
            if reply is None:  # queued: the next step answers it, under this epoch
                self.queued_epochs[envelope.session, envelope.seq] = envelope.epoch
                return
            self._answered(peer, envelope.session, envelope.epoch, reply)
        except WireError as exc:
            self.errors += 1
            log.info("peer %s: %s: %s", peer.hex(), type(exc).__name__, exc)
            reply = Error(exc.code, str(exc), getattr(exc, "retry_after_ms", 0))
        except Exception:  # a bug of ours must not take every other user down
            self.errors += 1
            log.exception("internal error serving peer %s", peer.hex())
            reply = Error(ErrorCode.INTERNAL, "internal error in verifyd (see its log)")
        if envelope is not None:
            session, seq, epoch = envelope.session, envelope.seq, envelope.epoch
        else:  # undecodable: answer to whatever header we can still read
            header = peek_header(body)
            session, seq, epoch = (header.session, header.seq, header.epoch) if header \
                else (0, 0, 0)
        self.reply(peer, encode(reply, session, seq, epoch))

    def _answered(self, peer: bytes, session: int, epoch: int, reply: Message) -> None:
        """An OPEN that succeeded fixes the session's epoch and counts against its peer."""
        if isinstance(reply, Opened):
            self.epochs.opened(session, epoch)
            self.limiter.opened(peer, session)

    def reply(self, peer: bytes, frames: list[bytes]) -> None:
        """Never block on one client: a gone peer or a full queue loses only its own reply."""
        try:
            self.socket.send_multipart([peer, *frames], zmq.NOBLOCK)
        except zmq.Again:
            log.info("peer %s is not reading (HWM reached): reply dropped", peer.hex())
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            log.info("peer %s is gone: reply dropped", peer.hex())


def _set_socket_bounds(socket: zmq.Socket, limits: PeerLimits) -> None:
    """Bounded queues and messages, heartbeats, and replies to gone peers made visible."""
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, limits.max_msg_bytes)
    socket.setsockopt(zmq.SNDHWM, limits.hwm)
    socket.setsockopt(zmq.RCVHWM, limits.hwm)
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.setsockopt(zmq.HEARTBEAT_IVL, int(limits.heartbeat_s * 1000))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(limits.heartbeat_timeout_s * 1000))
    socket.setsockopt(zmq.HEARTBEAT_TTL, int(limits.heartbeat_timeout_s * 1000))


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
