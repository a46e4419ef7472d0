"""Every TCP connection to the daemon's ROUTER: counted, capped, watched, and known when gone.

libzmq hides connections from the socket's owner: a ROUTER hands out messages with a routing
id, never says when a peer leaves, and buffers a multipart message whole (any number of
frames) before anyone sees its first frame. A socket monitor does report each accepted
connection's file descriptor and its end. A watchdog thread reads those events and, per
connection, keeps a duplicate of the descriptor to

- read the peer's address (``getpeername``) and refuse connections past ``max_connections``
  or ``max_connections_per_address`` by shutting the socket down (libzmq then drops it);
- bound what the peer can make us buffer: the kernel's count of bytes received
  (``TCP_INFO``), less that count when the server last read a message from it, must stay under
  ``max_backlog_bytes`` (plus a trickle for heartbeats). A message still arriving blocks every
  later one on its connection, so this bounds a half-sent message of any frame count, and with
  the receive high-water mark the messages queued behind a busy step.

The server tells us, per message, which descriptor it came from (``ZMQ_SRCFD``) and its
routing id; ``gone(routing_id)`` is then true once that connection has ended, so the
scheduler can reclaim an idle session whose client has left before it refuses a newcomer.
Shared state is plain dicts and ints, each written by one thread (GIL-atomic operations).
Without ``TCP_INFO`` (not Linux) the byte bound is off; the rest still holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket as pysocket
import struct
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import zmq
from edgespec.verify_daemon.limits import PeerLimits, address_key

log = logging.getLogger(__name__)

TICK_S = 0.005  # a connection that is sending is checked this often...
QUIET_TICK_S = 0.02  # ...a quiet one this often: the overshoot is what arrives in between
HEARTBEAT_ALLOWANCE = 256  # bytes a second a quiet peer may send that are not messages (PINGs)
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
_TCP_INFO = getattr(pysocket, "TCP_INFO", None)
_BYTES_RECEIVED = struct.Struct("<Q")  # struct tcp_info's tcpi_bytes_received, at offset 128
_BYTES_RECEIVED_AT = 128


@dataclass(slots=True)
class Conn:
    fd: int  # libzmq's descriptor (what ZMQ_SRCFD names)
    sock: pysocket.socket  # our duplicate: getpeername, TCP_INFO, shutdown
    address: str  # address_key of the peer
    mark: int  # TCP bytes received when a delivery was last seen
    marked_at: float
    delivered: int = 0  # messages the server has read from it (server thread writes)
    seen_delivered: int = 0  # the watchdog's last look at ``delivered``
    rid: bytes = b""  # its routing id, once a message came (server thread writes)
    cut: bool = False
    last_received: int = 0
    next_check: float = 0.0


class Connections:
    def __init__(self, router: zmq.Socket, limits: PeerLimits):
        self.limits = limits
        self.router = router
        self.monitor = router.get_monitor_socket(_EVENTS)
        self.by_fd: dict[int, Conn] = {}
        self.by_rid: dict[bytes, Conn] = {}
        self.ended: OrderedDict[bytes, None] = OrderedDict()  # routing ids of ended connections
        self.max_ended = 4 * limits.max_connections
        self.per_address: Counter[str] = Counter()
        self.refused = 0  # connections over a cap
        self.cut_backlog = 0  # connections that sent more than we may buffer
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verifyd-connections",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Called by the socket's owner before it closes the socket."""
        self._stop.set()
        self._thread.join(5)
        self.router.disable_monitor()
        self.monitor.close(0)
        for conn in list(self.by_fd.values()):
            conn.sock.close()

    # ------------------------------------------------------------ server thread

    def seen(self, rid: bytes, frame: zmq.Frame) -> str:
        """Count a message read from ``frame``'s connection; return the peer's address key."""
        try:
            fd = int(frame.get(zmq.SRCFD))
        except (zmq.ZMQError, ValueError, TypeError):  # no SRCFD here: nothing is ever "gone"
            fd = -1
        conn = self.by_fd.get(fd)
        if conn is None:  # not seen accepted yet (or already ended): ask the message
            try:
                return address_key(str(frame.get("Peer-Address")))
            except zmq.ZMQError:
                return ""
        conn.delivered += 1
        if conn.rid != rid:
            conn.rid = rid
            self.by_rid[rid] = conn
        return conn.address

    def gone(self, rid: bytes) -> bool:
        """True when the connection with routing id ``rid`` is known to have ended (one we
        never matched to a descriptor counts as alive: reclaiming is only for the sure)."""
        return rid in self.ended

    @property
    def count(self) -> int:
        return len(self.by_fd)

    # ------------------------------------------------------------ watchdog thread

    def _run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while not self._stop.is_set():
            try:
                if self.monitor.poll(int(TICK_S * 1000)):
                    while self.monitor.poll(0):
                        event = recv_monitor_message(self.monitor)
                        if event["event"] == zmq.EVENT_ACCEPTED:
                            self._accepted(int(event["value"]))
                        else:
                            self._ended(int(event["value"]))
                self._check_backlogs(time.monotonic())
            except zmq.ZMQError as exc:  # the monitor closed under us: shutting down
                if not self._stop.is_set():
                    log.warning("connection watchdog stopped: %s", exc)
                return
            except Exception:  # a bug here must not leave the daemon without its bounds
                log.exception("connection watchdog error (continuing)")

    def _accepted(self, fd: int) -> None:
        try:
            sock = pysocket.socket(fileno=os.dup(fd))
        except OSError:
            return  # already closed again
        try:
            address = address_key(str(sock.getpeername()[0]))
        except (OSError, IndexError):
            sock.close()
            return
        lim = self.limits
        if len(self.by_fd) >= lim.max_connections or \
                self.per_address[address] >= lim.max_connections_per_address:
            self.refused += 1
            log.info("refusing a connection from %s: %d connections, %d from it", address,
                     len(self.by_fd), self.per_address[address])
            _shutdown(sock)
            sock.close()
            return
        old = self.by_fd.pop(fd, None)  # a missed end: the descriptor was reused
        if old is not None:
            self._forget(old)
        self.by_fd[fd] = Conn(fd, sock, address, _bytes_received(sock), time.monotonic())
        self.per_address[address] += 1
        self.peak = max(self.peak, len(self.by_fd))

    def _ended(self, fd: int) -> None:
        conn = self.by_fd.pop(fd, None)
        if conn is not None:
            self._forget(conn)

    def _forget(self, conn: Conn) -> None:
        if self.by_rid.get(conn.rid) is conn:
            del self.by_rid[conn.rid]
            self.ended[conn.rid] = None
            while len(self.ended) > self.max_ended:
                self.ended.popitem(last=False)
        self.per_address[conn.address] -= 1
        if self.per_address[conn.address] <= 0:
            del self.per_address[conn.address]
        conn.sock.close()

    def _check_backlogs(self, now: float) -> None:
        if _TCP_INFO is None:
            return
        for conn in list(self.by_fd.values()):
            if now < conn.next_check:
                continue
            received = _bytes_received(conn.sock)
            active, conn.last_received = received != conn.last_received, received
            conn.next_check = now + (TICK_S if active else QUIET_TICK_S)
            if conn.delivered != conn.seen_delivered or received < conn.mark:
                conn.seen_delivered, conn.mark, conn.marked_at = conn.delivered, received, now
                continue
            allowed = self.limits.max_backlog_bytes + HEARTBEAT_ALLOWANCE * (now - conn.marked_at)
            if received - conn.mark > allowed and not conn.cut:
                conn.cut = True
                self.cut_backlog += 1
                log.info("dropping a connection from %s: %d bytes sent that form no message "
                         "yet (--max-backlog %d)", conn.address, received - conn.mark,
                         self.limits.max_backlog_bytes)
                _shutdown(conn.sock)


def _bytes_received(sock: pysocket.socket) -> int:
    if _TCP_INFO is None:
        return 0
    try:
        info = sock.getsockopt(pysocket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return 0
    if len(info) < _BYTES_RECEIVED_AT + _BYTES_RECEIVED.size:
        return 0
    return int(_BYTES_RECEIVED.unpack_from(info, _BYTES_RECEIVED_AT)[0])


def _shutdown(sock: pysocket.socket) -> None:
    """End the connection for libzmq too (it reads EOF and drops it), keeping the descriptor
    valid until libzmq reports the end, so no reused descriptor is ever touched."""
    with contextlib.suppress(OSError):
        sock.shutdown(pysocket.SHUT_RDWR)
