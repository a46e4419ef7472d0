"""Replies the ROUTER could not take at once: kept briefly per peer, in order, then sent.

With ``ROUTER_MANDATORY`` a send to a peer whose queue is at its high-water mark fails with
EAGAIN. That happens to peers that do read: libzmq's writer learns what the connection's
reader took only every ``hwm / 2`` messages, and when the step's deferred requests are answered
in one burst while the I/O thread is not scheduled (a loaded machine), a client with a few
dozen requests in flight hits the mark. Dropping that reply would leave the client waiting
for a request the daemon served. So a reply that does not fit waits here, and everything
later for that peer queues behind it (replies keep their order), until the socket takes it.

Bounded like everything else: per peer at most ``max_messages`` replies and ``max_bytes``
bytes wait, and a peer whose oldest waiting reply is older than ``stall_s`` is one that is
not reading (its heartbeats may still flow): its waiting replies are dropped, and only its.
A gone peer (EHOSTUNREACH) loses its replies at once.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Waiting:
    progress_at: float  # when the socket last took one of this peer's replies (or queued)
    replies: deque[list[bytes]] = field(default_factory=deque)
    size: int = 0  # bytes waiting


class Outbox:
    def __init__(self, socket: zmq.Socket, max_messages: int, max_bytes: int, stall_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.socket = socket
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.stall_s = stall_s
        self.clock = clock
        self.waiting: OrderedDict[bytes, _Waiting] = OrderedDict()
        self.delayed = 0  # replies that had to wait at least once
        self.dropped = 0  # replies lost: a gone peer, or one not reading past the bounds

    @property
    def pending(self) -> bool:
        return bool(self.waiting)

    def send(self, peer: bytes, frames: list[bytes]) -> None:
        """Send now, or queue behind this peer's waiting replies; never blocks."""
        queue = self.waiting.get(peer)
        if queue is None:
            outcome = self._try(peer, frames)
            if outcome != "full":
                return
            queue = self.waiting[peer] = _Waiting(self.clock())
        size = sum(len(f) for f in frames)
        if len(queue.replies) >= self.max_messages or queue.size + size > self.max_bytes:
            self.dropped += 1
            log.info("peer %s is not reading (%d replies waiting): reply dropped", peer.hex(),
                     len(queue.replies))
            return
        queue.replies.append(frames)
        queue.size += size
        self.delayed += 1

    def flush(self) -> None:
        """Send what the socket takes now; drop the replies of peers that stopped reading."""
        now = self.clock()
        for peer in list(self.waiting):
            queue = self.waiting[peer]
            while queue.replies:
                outcome = self._try(peer, queue.replies[0])
                if outcome == "full":
                    break
                frames = queue.replies.popleft()
                queue.size -= sum(len(f) for f in frames)
                queue.progress_at = now
                if outcome == "gone":  # the head was counted by _try; the rest go with it
                    self.dropped += len(queue.replies)
                    queue.replies.clear()
            if not queue.replies:
                del self.waiting[peer]
            elif now - queue.progress_at > self.stall_s:
                self.dropped += len(queue.replies)
                log.info("peer %s read nothing for %.0f s: %d replies dropped", peer.hex(),
                         now - queue.progress_at, len(queue.replies))
                del self.waiting[peer]

    def _try(self, peer: bytes, frames: list[bytes]) -> str:
        """"sent", "full" (the peer's queue is at its mark) or "gone" (reply lost)."""
        try:
            self.socket.send_multipart([peer, *frames], zmq.NOBLOCK)
        except zmq.Again:
            return "full"
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self.dropped += 1
            log.info("peer %s is gone: reply dropped", peer.hex())
            return "gone"
        return "sent"
