"""The ROUTER front end: poll, decode, hand to the engine, reply, expire idle sessions.

Like zguide's ``mdbroker.py``: one socket, one loop, and a bad frame is logged and answered
with a typed ERROR, never allowed to take the daemon down or touch another session.
"""

from __future__ import annotations

import logging
import time

import zmq
from edgespec.verify_daemon.engine import Engine
from edgespec.wire.codec import Error, decode, encode, peek_header
from edgespec.wire.errors import ErrorCode, WireError
from edgespec.wire.protocol import Limits

log = logging.getLogger(__name__)

POLL_MS = 200
EXPIRE_EVERY_S = 5.0


class Server:
    def __init__(self, engine: Engine, endpoint: str, limits: Limits | None = None):
        self.engine = engine
        self.limits = limits or Limits(max_draft_tokens=64)
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, 4 * self.limits.max_frame_bytes)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
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
                    next_expire = now + EXPIRE_EVERY_S
        finally:
            self.socket.close(0)

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
            envelope = decode(body, self.limits)
            reply = self.engine.handle(peer, envelope.session, envelope.msg)
        except WireError as exc:
            self.errors += 1
            log.info("peer %s: %s: %s", peer.hex(), type(exc).__name__, exc)
            reply = Error(exc.code, str(exc))
        except Exception:  # a bug of ours must not take every other user down
            self.errors += 1
            log.exception("internal error serving peer %s", peer.hex())
            reply = Error(ErrorCode.INTERNAL, "internal error in verifyd (see its log)")
        if envelope is not None:
            session, seq = envelope.session, envelope.seq
        else:  # undecodable: answer to whatever header we can still read
            header = peek_header(body)
            session, seq = (header.session, header.seq) if header else (0, 0)
        self.socket.send_multipart([peer, *encode(reply, session, seq)])
