"""``Link.reply_waiting``: says a reply has arrived without reading it (the client's cue that
the daemon is done with its OPEN and the draft may take its cores)."""

from __future__ import annotations

import time

import zmq
from edgespec.edge_client.transport import Link
from edgespec.wire.codec import Close, Opened, decode, encode


def test_reply_waiting_sees_a_reply_and_leaves_it_to_be_read():
    ctx: zmq.Context = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    link = Link(f"tcp://127.0.0.1:{port}", timeout_s=5.0)
    try:
        seq = link.send(Close(), session=7)
        identity, *frames = router.recv_multipart()
        assert not link.reply_waiting()  # asked, not answered
        request = decode(frames)
        router.send_multipart([identity, *encode(Opened(42), 7, request.seq, request.epoch)])
        deadline = time.monotonic() + 5
        while not link.reply_waiting():
            assert time.monotonic() < deadline, "the reply never showed"
            time.sleep(0.01)
        assert link.reply_waiting()  # looking twice reads nothing
        assert link.wait(seq) == Opened(42)
        assert not link.reply_waiting()
    finally:
        link.close()
        router.close(linger=0)
