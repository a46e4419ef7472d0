"""Malformed and hostile frames against a live daemon: each gets a typed error, and a
well-behaved client generating at the same time keeps its exact tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from edgespec.tools.prompts import CHAT_PROMPTS
from edgespec.wire.codec import Draft, Error, Open, Ping, Pong, decode, encode
from edgespec.wire.errors import ErrorCode
from edgespec.wire.protocol import HEADER, MAGIC, VERSION, MsgType

pytestmark = pytest.mark.slow


def ask(sock: zmq.Socket, frames: list[bytes], timeout_ms: int = 30_000):
    sock.send_multipart(frames)
    assert sock.poll(timeout_ms), "daemon did not answer"
    return decode(sock.recv_multipart()).msg


def expect_error(sock: zmq.Socket, frames: list[bytes], code: ErrorCode) -> str:
    reply = ask(sock, frames)
    assert isinstance(reply, Error), reply
    assert reply.code == code, (reply.code, reply.message)
    assert reply.message
    return reply.message


def bad_frames(vocab_limit: int) -> list[tuple[str, list[bytes], ErrorCode]]:
    good_open = encode(Open(np.array([1, 2, 3], dtype=np.int32), 8), session=77, seq=1)
    truncated = [good_open[0], good_open[1][:-3], good_open[2]]
    wrong_version = [HEADER.pack(MAGIC, 9, int(MsgType.PING), 0, 0, 5), b"\0" * 8]
    huge = encode(Draft(0, np.zeros(4096, dtype=np.int32)), session=77, seq=2)
    oov = encode(Open(np.array([1, vocab_limit + 5], dtype=np.int32), 8), session=78, seq=3)
    unknown_session = encode(Draft(3, np.array([1], dtype=np.int32)), session=999, seq=4)
    unknown_type = [HEADER.pack(MAGIC, VERSION, 99, 0, 0, 6)]
    garbage = [b"GET / HTTP/1.1\r\n\r\n"]
    return [
        ("truncated", truncated, ErrorCode.MALFORMED),
        ("wrong version", wrong_version, ErrorCode.VERSION_MISMATCH),
        ("huge draft", huge, ErrorCode.LIMIT_EXCEEDED),
        ("out-of-vocabulary id", oov, ErrorCode.INVALID_TOKEN),
        ("unknown session", unknown_session, ErrorCode.UNKNOWN_SESSION),
        ("unknown type", unknown_type, ErrorCode.MALFORMED),
        ("garbage", garbage, ErrorCode.MALFORMED),
    ]


def test_bad_frames_get_errors_while_a_good_client_stays_exact(daemon, check_exact, tmp_path):
    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text(json.dumps({"id": "good", "prompt": CHAT_PROMPTS[0]}))
    good = subprocess.Popen(
        [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
         daemon.endpoint, "--prompt-file", str(prompt_file), "--json", "--max-tokens", "96",
         "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        rounds = 0
        while good.poll() is None or rounds == 0:
            for name, frames, code in bad_frames(49152):
                message = expect_error(sock, frames, code)
                assert message, name
            rounds += 1
            time.sleep(0.05)
        assert isinstance(ask(sock, encode(Ping(42))), Pong)  # the daemon still serves
    finally:
        sock.close(0)
    out, err = good.communicate(timeout=300)
    assert good.returncode == 0, err
    result = json.loads(out.splitlines()[0])
    assert "error" not in result, result
    assert rounds >= 2, "the bad frames did not overlap the good client's generation"
    check_exact(result["prompt_token_ids"], result["token_ids"], 96)


def test_open_with_empty_prompt_and_a_version_1_header(daemon):
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        expect_error(sock, encode(Open(np.array([], dtype=np.int32), 4), session=5),
                     ErrorCode.MALFORMED)
        version_1 = [HEADER.pack(MAGIC, 1, int(MsgType.PING), 0, 0, 0), b"\0" * 8]
        expect_error(sock, version_1, ErrorCode.VERSION_MISMATCH)
    finally:
        sock.close(0)
