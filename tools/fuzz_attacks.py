"""Stateful attack classes for ``fuzz_live``: each runs on its own thread against a live
verifyd until told to stop, from loopback addresses other than 127.0.0.1 (all of 127/8 is
local on Linux), so the daemon's per-address bounds apply to the attacker and not to the
good client beside it.

- ``races``: DRAFT then an immediate re-OPEN of the same history, drafts on sessions other
  connections opened, stale epochs, CLOSE storms;
- ``sampling``: tiny and extreme sampling values (temperatures 1e-44 .. 100, top-p 1e-30,
  huge top-k, threshold mode), each answer checked against greedy where greedy is the law;
- ``hogs``: many connections holding as many sessions as they are allowed, then vanishing;
- ``raw``: peers that never complete a ZMTP 3 handshake (HTTP, one byte, ZMTP 2.0, silence,
  half a greeting) and connection floods from one address;
- ``floods``: messages of many frames over raw ZMTP 3, never finished, and oversized frames;
- ``long_prompts``: prompts of thousands of tokens beside everyone's short answers.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import zmq
from edgespec.wire.codec import (
    Close,
    Draft,
    Error,
    Message,
    Open,
    Opened,
    SamplingParams,
    Verdict,
    decode,
    encode,
)
from edgespec.wire.errors import WireError

GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
_READY = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
ZMTP3_NULL_DEALER = GREETING + bytes([0x04, len(_READY)]) + _READY  # a DEALER's handshake
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646]


class Tally:
    """What the attackers did and saw; shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n


def ids(tokens: list[int]) -> np.ndarray:
    return np.array(tokens, dtype=np.int32)


class Attack:
    """One attack class: ``step`` is called until ``stop`` is set; ``pause_s`` between steps
    keeps the attacker's own CPU use modest (it shares the machine with the daemon)."""

    pause_s = 0.05

    def __init__(self, endpoint: str, source: str, tally: Tally, seed: int):
        self.endpoint = endpoint
        self.port = int(endpoint.rsplit(":", 1)[1])
        self.source = source
        self.tally = tally
        self.rng = random.Random(seed)
        self.context: zmq.Context = zmq.Context.instance()
        self.sockets: list[zmq.Socket] = []
        self.setup()

    def setup(self) -> None:
        """Per-class state, made once before the first step."""

    def dealer(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{self.source}:0;{self.endpoint.removeprefix('tcp://')}")
        self.sockets.append(sock)
        return sock

    def ask(self, sock: zmq.Socket, msg: Message, sid: int, seq: int, epoch: int = 0,
            timeout_ms: int = 5000) -> Message | None:
        sock.send_multipart(encode(msg, sid, seq, epoch))
        return self.reply(sock, timeout_ms)

    def reply(self, sock: zmq.Socket, timeout_ms: int = 5000) -> Message | None:
        if not sock.poll(timeout_ms):
            self.tally.add("no_reply")
            return None
        try:
            msg = decode(sock.recv_multipart()).msg
        except WireError:  # the daemon must only ever send well-formed replies
            self.tally.add("undecodable_reply")
            return None
        self.tally.add(f"reply_{msg.code.name}" if isinstance(msg, Error)
                       else f"reply_{type(msg).__name__}")
        return msg

    def drain(self, sock: zmq.Socket) -> None:
        while sock.poll(0):
            self.reply(sock, 0)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.step()
                except (zmq.ZMQError, OSError) as exc:
                    self.tally.add(f"{type(self).__name__}_{type(exc).__name__}")
                stop.wait(self.pause_s)
        finally:
            for sock in self.sockets:
                sock.close(0)

    def step(self) -> None:
        raise NotImplementedError


class Races(Attack):
    """Re-open/draft races, drafts on another connection's sessions, stale epochs."""

    pause_s = 0.02

    def setup(self) -> None:
        self.a, self.b = self.dealer(), self.dealer()
        self.seq = 0

    def step(self) -> None:
        sid = self.rng.getrandbits(62) | 1
        self.seq += 4
        if not isinstance(self.ask(self.a, Open(ids(PROMPT), 8), sid, self.seq, epoch=5),
                          Opened):
            return
        for _ in range(self.rng.randrange(1, 20)):  # DRAFT, then at once the same re-OPEN
            self.seq += 2
            self.a.send_multipart(encode(Draft(8, ids([5, 6, 7])), sid, self.seq, 5))
            self.a.send_multipart(encode(Open(ids(PROMPT), 8), sid, self.seq + 1, 5))
        self.b.send_multipart(encode(Draft(8, ids([5])), sid, 1, 5))  # not its session
        self.b.send_multipart(encode(Open(ids(PROMPT), 8), sid, 2, 4))  # a stale epoch
        self.a.send_multipart(encode(Close(), sid, self.seq + 2, 5))
        self.tally.add("race_rounds")
        time.sleep(0.05)
        self.drain(self.a)
        self.drain(self.b)


class Sampling(Attack):
    """Extreme sampling settings; where the law is greedy, the answer must be greedy's."""

    TEMPERATURES = (1e-44, 1e-38, 1e-30, 1e-7, 1e-3, 7.0, 100.0)

    def setup(self) -> None:
        self.sock = self.dealer()
        self.greedy: int | None = None

    def first_token(self, sampling: SamplingParams, sid: int) -> int | None:
        if not isinstance(self.ask(self.sock, Open(ids(PROMPT), 4, sampling), sid, 1), Opened):
            return None
        verdict = self.ask(self.sock, Draft(len(PROMPT), ids([])), sid, 2)
        self.ask(self.sock, Close(), sid, 3)
        return verdict.next_token if isinstance(verdict, Verdict) else None

    def step(self) -> None:
        if self.greedy is None:
            self.greedy = self.first_token(SamplingParams(), 77)
            return
        temperature = self.rng.choice(self.TEMPERATURES)
        sampling = SamplingParams(
            temperature=temperature, top_k=self.rng.choice((0, 1, 1 << 23)),
            top_p=self.rng.choice((1.0, 1e-30, 0.5)), seed=self.rng.getrandbits(63),
            verify=self.rng.choice((0, 0, 1, 2)), threshold=self.rng.choice((0.0, 1e-30, 1.0)))
        token = self.first_token(sampling, self.rng.getrandbits(62) | 1)
        self.tally.add("sampling_rounds")
        greedy_law = temperature < 1e-6 or sampling.top_k == 1 or sampling.top_p == 1e-30
        if token is not None and greedy_law and token != self.greedy:
            self.tally.add("wrong_answers")  # not from the target's distribution


class Hogs(Attack):
    """Connections opening all the sessions they may, then vanishing without a CLOSE."""

    pause_s = 0.5

    def step(self) -> None:
        socks = [self.dealer() for _ in range(self.rng.randrange(2, 6))]
        for c, sock in enumerate(socks):
            for i in range(self.rng.randrange(4, 20)):
                sock.send_multipart(encode(Open(ids([*PROMPT, c, i]), 8),
                                           self.rng.getrandbits(62) | 1, i))
        time.sleep(self.rng.uniform(0.2, 2.0))
        for sock in socks:
            self.drain(sock)
            sock.close(0)
            self.sockets.remove(sock)
        self.tally.add("hog_rounds")


class Raw(Attack):
    """Peers that never speak ZMTP 3, and floods of connections from one address."""

    pause_s = 0.2
    BAD = (b"GET / HTTP/1.1\r\nHost: verifyd\r\n\r\n", b"\x01",
           b"\xff" + b"\0" * 8 + b"\x7f\x01\x05", b"", b"\xff\0\0\0")

    def setup(self) -> None:
        self.open: list[tuple[float, socket.socket]] = []

    def step(self) -> None:
        now = time.monotonic()
        for _ in range(self.rng.randrange(1, 12)):
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=2,
                                                source_address=(self.source, 0))
                data = self.rng.choice(self.BAD)
                if data:
                    sock.sendall(data)
                self.open.append((now, sock))
                self.tally.add("raw_connections")
            except OSError:
                self.tally.add("raw_refused_at_connect")
        keep = []
        for opened, sock in self.open:  # keep each up to 30 s, as a slow attacker would
            if now - opened > 30:
                sock.close()
            else:
                keep.append((opened, sock))
        self.open = keep

    def run(self, stop: threading.Event) -> None:
        try:
            super().run(stop)
        finally:
            for _, sock in self.open:
                sock.close()


class Floods(Attack):
    """Unfinished messages of many frames over raw ZMTP 3, and oversized frames."""

    pause_s = 1.0

    def step(self) -> None:
        frame = self.rng.choice((64 << 10, 200 << 10, 4 << 20))
        frames = self.rng.randrange(20, 400)
        chunk = b"\x03" + struct.pack(">Q", frame) + b"\x5a" * frame  # MORE | LONG
        sent = 0
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                          source_address=(self.source, 0)) as sock:
                sock.sendall(ZMTP3_NULL_DEALER)
                for _ in range(frames):
                    sock.sendall(chunk)
                    sent += len(chunk)
            self.tally.add("flood_fully_sent")  # closed by us: the daemon took it all
        except OSError:
            self.tally.add("flood_cut")
        self.tally.add("flood_bytes", sent)


class LongPrompts(Attack):
    """Prompts of thousands of tokens, opened and closed, beside short answers."""

    pause_s = 2.0

    def setup(self) -> None:
        self.sock = self.dealer()
        self.tokens = [int(t) for t in np.random.default_rng(1).integers(200, 40_000, 8000)]

    def step(self) -> None:
        sid = self.rng.getrandbits(62) | 1
        n = self.rng.randrange(1000, 8000)
        reply = self.ask(self.sock, Open(ids(self.tokens[:n]), 4), sid, 1, timeout_ms=120_000)
        self.tally.add("long_prompt_tokens" if isinstance(reply, Opened) else
                       "long_prompt_refused", n if isinstance(reply, Opened) else 1)
        self.ask(self.sock, Close(), sid, 2)


ATTACKS: dict[str, Callable[..., Attack]] = {
    "races": Races, "sampling": Sampling, "hogs": Hogs, "raw": Raw, "floods": Floods,
    "long_prompts": LongPrompts,
}


def start_attacks(endpoint: str, names: list[str], tally: Tally, stop: threading.Event,
                  seed: int = 0) -> list[threading.Thread]:
    """One thread per attack class, each from its own loopback address (127.0.0.2..)."""
    threads = []
    for i, name in enumerate(names):
        attack = ATTACKS[name](endpoint, f"127.0.0.{2 + i}", tally, seed + i)
        thread = threading.Thread(target=attack.run, args=(stop,), name=f"attack-{name}",
                                  daemon=True)
        thread.start()
        threads.append(thread)
    return threads
