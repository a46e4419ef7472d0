"""The ROUTER front end: poll, decode, hand to the engine, reply, expire idle sessions.

Like zguide's ``mdbroker.py``: one socket, one loop, and a bad frame is logged and answered
with a typed ERROR, never allowed to take the daemon down or touch another session.
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path

import zmq
from edgespec.verify_daemon.engine import Engine
from edgespec.verify_daemon.epochs import EpochGuard
from edgespec.verify_daemon.limits import PeerLimiter, PeerLimits
from edgespec.wire import curve
from edgespec.wire.codec import Error, Open, Opened, decode, encode, peek_header
from edgespec.wire.errors import ErrorCode, WireError
from edgespec.wire.protocol import Limits

log = logging.getLogger(__name__)

POLL_MS = 200
EXPIRE_EVERY_S = 5.0


class Server:
    def __init__(self, engine: Engine, endpoint: str, limits: Limits | None = None,
                 peer_limits: PeerLimits | None = None, keys_dir: Path | None = None,
                 allow_dir: Path | None = None):
        self.engine = engine
        self.limits = limits or Limits(max_draft_tokens=64)
        self.peer_limits = peer_limits or PeerLimits()
        self.limiter = PeerLimiter(self.peer_limits)
        self.epochs = EpochGuard()
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

    def serve_forever(self, ready_message: bool = True) -> None:
        if ready_message:
            # Tests and scripts wait for this exact line before connecting.
            print(f"verifyd ready on {self.endpoint}", flush=True)
        next_expire = time.monotonic() + EXPIRE_EVERY_S
        try:
            while True:
                if self.socket.poll(POLL_MS):
                    self.serve_ready()
                now = time.monotonic()
                if now >= next_expire:
                    dropped = self.engine.expire(now)
                    if dropped:
                        log.info("expired %d idle sessions", dropped)
                    self.limiter.prune(now, self._is_live)
                    self.epochs.prune(self._is_live)
                    next_expire = now + EXPIRE_EVERY_S
        finally:
            self.socket.close(0)
            if self.curve is not None:
                self.curve.stop()

    def _is_live(self, sid: int) -> bool:
        return sid in self.engine.sessions

    def serve_ready(self) -> None:
        """Answer every request already queued, oldest first."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.serve_one(frames)

    def serve_one(self, frames: list[bytes]) -> None:
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
            reply = self.engine.handle(peer, envelope.session, envelope.msg)
            if isinstance(reply, Opened):
                self.epochs.opened(envelope.session, envelope.epoch)
                self.limiter.opened(peer, envelope.session)
        except WireError as exc:
            self.errors += 1
            log.info("peer %s: %s: %s", peer.hex(), type(exc).__name__, exc)
            reply = Error(exc.code, str(exc))
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
