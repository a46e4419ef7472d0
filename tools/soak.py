"""Soak benchmark (not CI): N replayed sessions against one verifyd for a while; no error, no
lost or changed token, resident memory flat after warm-up.

    tools/soak --traces bench-out/batching-trace.jsonl --sessions 64 --minutes 10 [--json]

Sessions replay the recorded traces over and over (each round's verdict must match the
recording), the daemon's RSS is sampled throughout, and growth is measured from the end of
the first tenth of the run (warm-up) to the end.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress


@click.command(context_settings={"show_default": True})
@click.option("--traces", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Recorded traces (tools/bench batching writes bench-out/batching-trace.jsonl).")
@click.option("--sessions", type=int, default=64)
@click.option("--minutes", type=float, default=10.0)
@click.option("--threads", type=int, default=2, help="verifyd's torch threads.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: one JSON object.")
def main(traces: str, sessions: int, minutes: float, threads: int, as_json: bool) -> None:
    """Run the soak and fail (exit 1) on an error, a divergence or memory growth over 5 %."""
    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.bench_batching import rss_kb
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.replay import Tally, load_sessions, percentile, replay

    console = Console(stderr=True)
    recorded = load_sessions((traces,))
    target = resolve_target(None, default_cache_dir())
    deadline_s = minutes * 60.0
    samples: list[tuple[float, int]] = []
    total = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(target, Path(tmp) / "verifyd.log", "--max-sessions",
                              str(sessions), "--max-sessions-per-address", str(sessions),
                              "--max-connections-per-address", str(sessions + 8),
                              "--max-prefill-per-address", str(1 << 22),
                              threads=threads)
        stop = threading.Event()
        start = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - start, rss_kb(daemon.process.pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            with Progress(console=console) as progress:
                task = progress.add_task(f"soak: {sessions} sessions", total=deadline_s)
                while time.monotonic() - start < deadline_s:
                    tally, _wall = replay(daemon.endpoint, recorded, sessions, "fast", 600.0)
                    total.merge(tally)
                    progress.update(task, completed=min(deadline_s, time.monotonic() - start))
        finally:
            stop.set()
            sampler.join()
            wall = time.monotonic() - start
            daemon.stop()
    warm = next((kb for t, kb in samples if t >= wall / 10), samples[0][1])
    end = samples[-1][1]
    result: dict[str, Any] = {
        "sessions": sessions, "minutes": round(wall / 60, 2), "rounds": total.rounds,
        "verified_tokens": total.accepted + total.rounds,
        "tok_s": round((total.accepted + total.rounds) / wall, 2),
        "p99_round_ms": round(percentile(total.latencies_ms, 99), 1),
        "errors": dict(total.errors), "diverged_rounds": total.diverged_rounds,
        "rss_warm_mb": round(warm / 1024, 1), "rss_end_mb": round(end / 1024, 1),
        "rss_peak_mb": round(max(kb for _t, kb in samples) / 1024, 1),
        "rss_growth": round(end / warm - 1.0, 4) if warm else 0.0,
    }
    console.print_json(data=result)
    if as_json:
        print(json.dumps(result))
    ok = not total.errors and not total.diverged_rounds and result["rss_growth"] < 0.05
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
