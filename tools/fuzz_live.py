"""Live fuzzer: hostile peers thrown at a running verifyd over loopback.

``run_fuzz`` throws random and mutated frames at an existing daemon. ``tools/fuzz --minutes
10 [--json]`` (``python -m edgespec.tools.fuzz_live``) is the benchmark: it starts its own
verifyd, measures a good client (the real ``edgespec generate``) quiet, then runs it again
and again beside every attack class of ``fuzz_attacks.py`` plus the random frames, and
reports whether the daemon stayed up, its RSS growth after warm-up (< 5 %), its open
descriptors (bounded), the good client's p99 round time against its quiet p99 (within 3×)
and whether any of its answers changed (none may).
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
from typing import Any

import numpy as np
import zmq
from edgespec.tools.fuzz_attacks import ATTACKS, Attack, Tally, start_attacks
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


class Frames(Attack):
    """The original class: random and mutated frames over a few connections."""

    pause_s = 0.02

    def setup(self) -> None:
        self.socks = [self.dealer() for _ in range(4)]
        self.sessions = [self.rng.getrandbits(63) | 1 for _ in range(6)] + [0]
        self.report = FuzzReport()

    def step(self) -> None:
        for sock in self.socks:
            for _ in range(8):
                sock.send_multipart(fuzz_frames(self.rng, self.sessions))
            self.tally.add("frames", 8)
            try:
                _drain(sock, self.report, 20)
            except AssertionError:
                self.tally.add("undecodable_reply")
        self.tally.add("frame_replies", self.report.replies)
        self.report.replies = 0


@dataclass
class GoodRuns:
    """The good client's answers and round trips (ms), one list per run."""

    tokens: list[list[int]] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def good_client_run(endpoint: str, draft: str, prompt_file: Path, trace: Path,
                    max_tokens: int, into: GoodRuns) -> None:
    """One real ``edgespec generate`` (its own process, the real draft), traced per round."""
    trace.unlink(missing_ok=True)
    run = subprocess.run(
        [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server", endpoint,
         "--draft", draft, "--prompt-file", str(prompt_file), "--json", "--max-tokens",
         str(max_tokens), "--threads", "1", "--trace", str(trace)],
        capture_output=True, text=True, timeout=900)
    result = json.loads(run.stdout.splitlines()[0]) if run.returncode == 0 and run.stdout \
        else {"error": run.stderr[-500:]}
    if "error" in result:
        into.failures.append(str(result["error"]))
        return
    into.tokens.append([int(t) for t in result["token_ids"]])
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "round":
            into.rtt_ms.append(float(record["rtt_ms"]))


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def run_benchmark(minutes: float, pair: str, attacks: list[str], out: Path, seed: int = 1,
                  quiet_runs: int = 3, max_tokens: int = 48, progress: bool = True
                  ) -> dict[str, Any]:
    """A good client quiet, then beside every attack class for ``minutes``; the verdict on
    liveness, memory, descriptors, the good client's p99 round and its tokens."""
    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.paths import default_cache_dir, default_draft_gguf
    from edgespec.models.tiny_pair import ensure_tiny_pair
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.prompts import CHAT_PROMPTS

    cache = default_cache_dir()
    if pair == "tiny":
        tiny = ensure_tiny_pair(cache)
        draft_path, gguf = tiny.draft_gguf, tiny.target_gguf
    else:
        draft_path = gguf = default_draft_gguf()
    target = ensure_target_snapshot(gguf, cache, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats_file = out.with_suffix(".stats.json")
    daemon = start_daemon(target, out.with_suffix(".verifyd.log"), "--stats-file",
                          str(stats_file), threads=1)
    pid = daemon.process.pid
    prompt_file = out.with_suffix(".prompt.jsonl")
    prompt_file.write_text(json.dumps({"id": "good", "prompt": CHAT_PROMPTS[0]}))
    trace = out.with_suffix(".trace.jsonl")
    say = print if progress else (lambda *a, **k: None)
    quiet, loud = GoodRuns(), GoodRuns()
    samples: list[tuple[float, float, int]] = []  # (s into the attack, RSS MiB, open fds)
    tally = Tally()
    stop = threading.Event()
    try:
        for i in range(quiet_runs):
            good_client_run(daemon.endpoint, str(draft_path), prompt_file, trace, max_tokens,
                            quiet)
            say(f"quiet run {i + 1}/{quiet_runs}: p99 round {p99(quiet.rtt_ms):.0f} ms")
        fds_quiet = open_fds(pid)
        start = time.monotonic()
        threads = start_attacks(daemon.endpoint, attacks, tally, stop, seed)
        frames = Frames(daemon.endpoint, f"127.0.0.{2 + len(attacks)}", tally, seed + 99)
        threads.append(threading.Thread(target=frames.run, args=(stop,), daemon=True))
        threads[-1].start()

        def sample() -> None:
            while not stop.is_set() and daemon.process.poll() is None:
                samples.append((time.monotonic() - start, rss_mib(pid), open_fds(pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        while time.monotonic() - start < minutes * 60 and daemon.process.poll() is None:
            good_client_run(daemon.endpoint, str(draft_path), prompt_file, trace, max_tokens,
                            loud)
            say(f"{time.monotonic() - start:.0f} s: {len(loud.tokens)} good runs, p99 round "
                f"{p99(loud.rtt_ms):.0f} ms, RSS {samples[-1][1] if samples else 0:.0f} MiB, "
                f"{samples[-1][2] if samples else 0} fds, {dict(tally.counts)}")
        stop.set()
        for thread in threads:
            thread.join(60)
        sampler.join(5)
        alive = daemon.process.poll() is None
        counters = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    finally:
        stop.set()
        daemon.stop()
    warm_s = min(60.0, 0.2 * minutes * 60)
    warm = next((rss for t, rss, _ in samples if t >= warm_s), samples[0][1] if samples else 0)
    rss_last = samples[-1][1] if samples else 0.0
    reference = quiet.tokens[0] if quiet.tokens else []
    fds = [f for _, _, f in samples]
    bound = fds_quiet + 512 + 64  # the daemon's own, --max-connections, and some slack
    result: dict[str, Any] = {
        "minutes": minutes, "pair": pair, "attacks": attacks, "daemon_alive": alive,
        "rss_mib_warm": round(warm, 1), "rss_mib_last": round(rss_last, 1),
        "rss_growth_pct": round(100.0 * (rss_last - warm) / warm, 2) if warm else None,
        "fds_quiet": fds_quiet, "fds_max": max(fds, default=0), "fds_last": fds[-1] if fds
        else 0, "fds_bound": bound,
        "good_runs_quiet": len(quiet.tokens), "good_runs_attack": len(loud.tokens),
        "good_failures": quiet.failures + loud.failures,
        "good_tokens_changed": sum(t != reference for t in quiet.tokens + loud.tokens),
        "quiet_p99_round_ms": round(p99(quiet.rtt_ms), 1),
        "attack_p99_round_ms": round(p99(loud.rtt_ms), 1),
        "attack": dict(tally.counts), "daemon_stats": counters,
    }
    result["p99_ratio"] = round(result["attack_p99_round_ms"] / result["quiet_p99_round_ms"], 2) \
        if quiet.rtt_ms and loud.rtt_ms else None
    result["checks"] = {
        "daemon_alive": alive,
        "rss_growth_under_5pct": result["rss_growth_pct"] is not None
        and result["rss_growth_pct"] < 5.0,
        "fds_bounded": result["fds_max"] <= bound,
        "p99_within_3x_quiet": result["p99_ratio"] is not None and result["p99_ratio"] <= 3.0,
        "no_changed_tokens": result["good_tokens_changed"] == 0 and bool(reference)
        and not result["good_failures"],
        "no_wrong_answers": tally.counts["wrong_answers"] == 0
        and tally.counts["undecodable_reply"] == 0,
    }
    result["ok"] = all(result["checks"].values())
    out.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    """Benchmark: every attack class for ``--minutes`` beside a good client (``--frames N``:
    the original run, N random frames)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--pair", choices=("default", "tiny"), default="default")
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help=f"comma-separated, of {', '.join(ATTACKS)}")
    parser.add_argument("--frames", type=int, default=0,
                        help="instead: the original run of this many random frames")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default="bench-out/fuzz_live.json")
    args = parser.parse_args()
    if args.frames:
        frames_benchmark(args.frames, args.seed, Path(args.out))
        return
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attack classes {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    result = run_benchmark(args.minutes, args.pair, attacks, Path(args.out), args.seed,
                           progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        for name, passed in result["checks"].items():
            print(f"{'PASS' if passed else 'FAIL'}  {name}")
        print(f"RSS {result['rss_mib_warm']} -> {result['rss_mib_last']} MiB "
              f"({result['rss_growth_pct']} %), fds max {result['fds_max']}, good p99 "
              f"{result['quiet_p99_round_ms']} -> {result['attack_p99_round_ms']} ms, "
              f"{result['good_tokens_changed']} changed answers; details in {args.out}")
    sys.exit(0 if result["ok"] else 1)


def frames_benchmark(n_frames: int, seed: int, out: Path) -> None:
    """The original benchmark: ``n_frames`` random frames against a fresh daemon while a
    good client generates."""
    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.paths import default_cache_dir, default_draft_gguf
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.prompts import CHAT_PROMPTS

    target = ensure_target_snapshot(default_draft_gguf(), default_cache_dir(), progress=True)
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
        report = run_fuzz(daemon.endpoint, n_frames, seed, daemon.process.pid, progress=True)
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
