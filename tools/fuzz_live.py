"""Live fuzzer: random and mutated frames thrown at a running verifyd over loopback.

``run_fuzz`` drives an existing daemon; ``python -m edgespec.tools.fuzz_live`` is the long
benchmark run: it starts its own verifyd, a well-behaved client generating the same prompt
over and over beside the fuzzer, and reports frames sent, replies by error code, the
daemon's resident memory over the run, and whether the good client's tokens ever changed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq
from edgespec.wire.codec import (
    Close,
    Draft,
    Error,
    Hello,
    Message,
    Open,
    Ping,
    Verdict,
    Welcome,
    decode,
    encode,
)
from edgespec.wire.errors import WireError
from edgespec.wire.protocol import HEADER, MAGIC, VERSION

WINDOW = 32  # frames in flight per socket before draining replies


@dataclass
class FuzzReport:
    frames: int = 0
    replies: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    rss_mib: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"frames": self.frames, "replies": self.replies, "codes": dict(self.codes),
                "rss_mib_first": self.rss_mib[0] if self.rss_mib else None,
                "rss_mib_last": self.rss_mib[-1] if self.rss_mib else None,
                "rss_mib_max": max(self.rss_mib) if self.rss_mib else None,
                "frames_per_s": round(self.frames / self.seconds, 1) if self.seconds else 0}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _valid(rng: random.Random) -> Message:
    ids = lambda n: np.array([rng.randrange(0, 49152) for _ in range(n)], dtype=np.int32)  # noqa: E731
    choices: list[Message] = [
        Hello(rng.randbytes(32), "fuzz"),
        Open(ids(rng.randrange(1, 24)), rng.randrange(0, 64)),
        Draft(rng.randrange(0, 40), ids(rng.randrange(0, 8))),
        Close(), Ping(rng.getrandbits(64)),
        Verdict(rng.randrange(0, 8), rng.randrange(0, 1000), rng.randrange(0, 99), 0),
        Welcome(rng.randbytes(32), 10, 4, 64, "x", (0,), ""),
    ]
    return rng.choice(choices)


def fuzz_frames(rng: random.Random, sessions: list[int]) -> list[bytes]:
    """One hostile multipart message: a valid one mutated, a forged header, or noise."""
    msg = _valid(rng)
    frames = encode(msg, rng.choice(sessions), rng.getrandbits(32), rng.getrandbits(16))
    kind = rng.randrange(8)
    if kind == 0:  # flip bytes anywhere
        i = rng.randrange(len(frames))
        f = bytearray(frames[i])
        for _ in range(rng.randrange(1, 4)):
            if f:
                f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
        frames[i] = bytes(f)
    elif kind == 1:  # truncate or extend a frame
        i = rng.randrange(len(frames))
        frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)] + rng.randbytes(
            rng.choice((0, 0, 3, 17)))
    elif kind == 2:  # drop or duplicate frames
        frames = frames[:-1] if rng.random() < 0.5 else frames + frames[-1:] * rng.randrange(9)
    elif kind == 3:  # forged header: right magic and version, any type
        frames[0] = HEADER.pack(MAGIC, VERSION, rng.randrange(256), rng.getrandbits(16),
                                rng.choice(sessions), rng.getrandbits(32))
    elif kind == 4:  # random noise, random frame count
        frames = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 10))]
    elif kind == 5:  # huge token frame
        frames = frames[:1] + [rng.randbytes(4 * rng.randrange(60, 5000))] * 2
    return [bytes(f) for f in frames] or [b""]  # kinds 6, 7: valid, out of context


def run_fuzz(endpoint: str, n_frames: int, seed: int = 0, pid: int | None = None,
             sockets: int = 4, progress: bool = False) -> FuzzReport:
    """Send ``n_frames`` hostile messages over ``sockets`` connections; drain what comes back."""
    rng = random.Random(seed)
    context: zmq.Context = zmq.Context.instance()
    socks = []
    for _ in range(sockets):
        s = context.socket(zmq.DEALER)
        s.linger = 0
        s.connect(endpoint)
        socks.append(s)
    sessions = [rng.getrandbits(63) | 1 for _ in range(6)] + [0]
    report = FuzzReport()
    start = time.perf_counter()
    try:
        while report.frames < n_frames:
            for s in socks:
                for _ in range(WINDOW):
                    s.send_multipart(fuzz_frames(rng, sessions))
                    report.frames += 1
                _drain(s, report, 200)
            if pid is not None and report.frames % 2048 < sockets * WINDOW:
                report.rss_mib.append(rss_mib(pid))
            if progress and report.frames % 8192 < sockets * WINDOW:
                print(f"  {report.frames} frames, {report.replies} replies", flush=True)
        for s in socks:  # the daemon may still be busy with a fuzzed session's forward pass
            _drain(s, report, 3000, then_ms=1000)
    finally:
        for s in socks:
            s.close(0)
    report.seconds = time.perf_counter() - start
    if pid is not None:
        report.rss_mib.append(rss_mib(pid))
    return report


def _drain(sock: zmq.Socket, report: FuzzReport, timeout_ms: int, then_ms: int = 10) -> None:
    while sock.poll(timeout_ms):
        timeout_ms = then_ms
        try:
            msg = decode(sock.recv_multipart()).msg
        except WireError as exc:  # the daemon must only ever send well-formed replies
            raise AssertionError(f"daemon sent an undecodable reply: {exc}") from exc
        report.replies += 1
        report.codes[msg.code.name if isinstance(msg, Error) else type(msg).__name__] += 1


def main() -> None:
    """Benchmark: 100,000 frames against a fresh daemon while a good client generates."""
    import argparse

    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.paths import default_cache_dir, default_draft_gguf
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.prompts import CHAT_PROMPTS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="bench-out/fuzz_live.json")
    args = parser.parse_args()
    target = ensure_target_snapshot(default_draft_gguf(), default_cache_dir(), progress=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    daemon = start_daemon(target, out.with_suffix(".verifyd.log"), "--max-rate", "1000000",
                          "--max-sessions-per-peer", "2", "--session-idle", "20", threads=1)
    prompt_file = out.with_suffix(".prompt.jsonl")
    prompt_file.write_text(json.dumps({"id": "good", "prompt": CHAT_PROMPTS[0]}))
    good_cmd = [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
                daemon.endpoint, "--prompt-file", str(prompt_file), "--json", "--max-tokens",
                "64", "--threads", "1"]
    answers: list[list[int]] = []
    done = threading.Event()

    def good_client() -> None:  # generates the same prompt again and again beside the fuzzer
        while not done.is_set():
            run = subprocess.run(good_cmd, capture_output=True, text=True, timeout=600)
            answers.append(json.loads(run.stdout.splitlines()[0]).get("token_ids", [])
                           if run.returncode == 0 and run.stdout else [])

    try:
        worker = threading.Thread(target=good_client)
        worker.start()
        report = run_fuzz(daemon.endpoint, args.frames, args.seed, daemon.process.pid,
                          progress=True)
        done.set()
        worker.join()
        alive = daemon.process.poll() is None
    finally:
        done.set()
        daemon.stop()
    result = {**report.as_dict(), "daemon_alive": alive, "good_runs": len(answers),
              "good_tokens_changed": sum(a != answers[0] for a in answers)}
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
