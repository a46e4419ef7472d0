"""``tools/bench batching``: many sessions verified in one batch versus one after another,
and the server's capacity with drafts versus target-only decoding (draft length 0).

Drafts come from traces recorded with the real client (recorded here first unless
``--traces`` is given) and are replayed by ``tools/replay``, so no draft model competes with
the daemon for the cores. Everything runs against one ``verifyd`` process, side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table


class RssSampler:
    """Peak resident memory of a process, sampled from /proc while a run lasts."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s, self.peak_kb = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, rss_kb(self.pid))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def record_traces(target: Path, draft: Path, path: Path, prompts: int, max_tokens: int,
                  workdir: Path) -> None:
    """Real client, real daemon (a core each), chat and code prompts, k up to 16."""
    from edgespec.tools.bench import load_prompts
    from edgespec.tools.daemon_proc import start_daemon

    lines = [{"id": f"chat{i}", "prompt": p} for i, (p, _raw) in
             enumerate(load_prompts("chat", (prompts + 1) // 2))]
    lines += [{"id": f"code{i}", "prompt": p, "raw": True} for i, (p, _raw) in
              enumerate(load_prompts("humaneval", prompts // 2))]
    prompt_file = workdir / "prompts.jsonl"
    prompt_file.write_text("\n".join(json.dumps(x) for x in lines))
    daemon = start_daemon(target, workdir / "verifyd-record.log", threads=1)
    try:
        subprocess.run([sys.executable, "-m", "edgespec.edge_client.cli", "generate",
                        "--server", daemon.endpoint, "--draft", str(draft), "--threads", "1",
                        "--prompt-file", str(prompt_file), "--max-tokens", str(max_tokens),
                        "--trace", str(path), "--json"], check=True, capture_output=True,
                       timeout=1800)
    finally:
        daemon.stop()


def read_stats(path: Path) -> dict[str, Any]:
    time.sleep(1.3)  # the daemon rewrites its stats file about once a second
    return dict(json.loads(path.read_text()))


def measure(run: Callable[[], tuple[Any, float]], stats_path: Path, pid: int
            ) -> dict[str, Any]:
    """One replay run: tokens/s, rounds' latency, forward passes per token, peak RSS."""
    from edgespec.tools.replay import percentile

    before = read_stats(stats_path)
    with RssSampler(pid) as rss:
        tally, wall = run()
    after = read_stats(stats_path)
    tokens = tally.accepted + tally.rounds
    steps = after["steps"] - before["steps"]
    return {"tok_s": tokens / wall if wall else 0.0, "tokens": tokens, "wall_s": wall,
            "forwards_per_token": steps / tokens if tokens else 0.0,
            "p99_round_ms": percentile(tally.latencies_ms, 99),
            "peak_rss_mb": rss.peak_kb / 1024, "diverged": tally.diverged_rounds,
            "errors": dict(tally.errors), "busy_retries": tally.busy_retries,
            "reopens": tally.reopens}


def run_batching(counts: list[int], traces: Path, threads: int, workdir: Path,
                 progress: Progress) -> dict[str, Any]:
    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.replay import as_target_only, load_sessions, replay

    recorded = load_sessions((str(traces),))
    if not recorded:
        raise click.ClickException(f"no sessions in {traces}")
    target = resolve_target(None, default_cache_dir())
    stats_path = workdir / "stats.json"
    n_cap = 16
    daemon = start_daemon(target, workdir / "verifyd-batching.log", "--max-sessions",
                          str(max(*counts, n_cap)), "--stats-file", str(stats_path),
                          threads=threads)
    pid = daemon.process.pid
    results: dict[str, Any] = {}
    try:
        replay(daemon.endpoint, recorded, 1, "fast", 600.0)  # warm-up
        task = progress.add_task("batched vs serial", total=len(counts) + 1)
        for n in counts:
            batched = measure(partial(replay, daemon.endpoint, recorded, n, "fast", 600.0),
                              stats_path, pid)
            serial = measure(partial(replay, daemon.endpoint, recorded, n, "fast", 600.0,
                                     concurrency=1), stats_path, pid)
            results[str(n)] = {
                "batched_tok_s": round(batched["tok_s"], 2),
                "serial_tok_s": round(serial["tok_s"], 2),
                "ratio": round(batched["tok_s"] / serial["tok_s"], 3) if serial["tok_s"] else 0,
                "forwards_per_token": round(batched["forwards_per_token"], 4),
                "serial_forwards_per_token": round(serial["forwards_per_token"], 4),
                "p99_round_ms": round(batched["p99_round_ms"], 1),
                "serial_p99_round_ms": round(serial["p99_round_ms"], 1),
                "peak_rss_mb": round(max(batched["peak_rss_mb"], serial["peak_rss_mb"]), 1),
                "diverged_rounds": batched["diverged"] + serial["diverged"],
                "errors": {**batched["errors"], **serial["errors"]},
            }
            progress.advance(task)
        k0 = [as_target_only(records) for records in recorded]
        drafts = measure(partial(replay, daemon.endpoint, recorded, n_cap, "fast", 600.0),
                         stats_path, pid)
        alone = measure(partial(replay, daemon.endpoint, k0, n_cap, "fast", 600.0),
                        stats_path, pid)
        results["capacity"] = {
            "sessions": n_cap,
            "draft_tok_s": round(drafts["tok_s"], 2),
            "target_only_tok_s": round(alone["tok_s"], 2),
            "ratio": round(drafts["tok_s"] / alone["tok_s"], 3) if alone["tok_s"] else 0,
            "draft_forwards_per_token": round(drafts["forwards_per_token"], 4),
            "target_only_forwards_per_token": round(alone["forwards_per_token"], 4),
            "diverged_rounds": drafts["diverged"] + alone["diverged"],
        }
        progress.advance(task)
    finally:
        daemon.stop()
    return results


def print_table(console: Console, results: dict[str, Any]) -> None:
    table = Table(title="verifyd: N sessions batched vs served one after another (tokens/s)")
    for col in ("sessions", "batched", "serial", "×", "fwd/token", "p99 round ms",
                "peak RSS MB", "diverged"):
        table.add_column(col, justify="right")
    for n, r in results.items():
        if n == "capacity":
            continue
        table.add_row(n, f"{r['batched_tok_s']:.1f}", f"{r['serial_tok_s']:.1f}",
                      f"{r['ratio']:.2f}", f"{r['forwards_per_token']:.3f}",
                      f"{r['p99_round_ms']:.0f}", f"{r['peak_rss_mb']:.0f}",
                      str(r["diverged_rounds"]))
    console.print(table)
    c = results["capacity"]
    console.print(f"capacity, {c['sessions']} sessions: with drafts {c['draft_tok_s']:.1f} "
                  f"tok/s, target-only {c['target_only_tok_s']:.1f} tok/s: ×{c['ratio']:.2f}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [n for n in results if n != "capacity"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(counts, [results[n]["batched_tok_s"] for n in counts], "o-", label="batched")
    ax1.plot(counts, [results[n]["serial_tok_s"] for n in counts], "s--", label="one by one")
    ax1.set_xlabel("concurrent sessions")
    ax1.set_ylabel("verified tokens/s (all sessions)")
    ax1.set_title("one verifyd, same sessions, one run")
    ax1.legend()
    c = results["capacity"]
    ax2.bar(["target only (k=0)", "with drafts"], [c["target_only_tok_s"], c["draft_tok_s"]])
    ax2.set_ylabel("generated tokens/s")
    ax2.set_title(f"capacity, {c['sessions']} sessions: ×{c['ratio']:.2f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


@click.command(context_settings={"show_default": True})
@click.option("--sessions", default="1,4,16,64", help="Concurrent session counts.")
@click.option("--traces", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Recorded traces to replay [default: record bench-out/batching-trace.jsonl].")
@click.option("--prompts", type=int, default=8, help="Prompts to record when recording.")
@click.option("--max-tokens", type=int, default=96, help="Tokens per recorded answer.")
@click.option("--threads", type=int, default=2, help="verifyd's torch threads.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: one JSON object.")
@click.option("--plot", "plot_path", type=click.Path(), default="bench-out/batching.png")
def batching(sessions: str, traces: str | None, prompts: int, max_tokens: int, threads: int,
             as_json: bool, plot_path: str) -> None:
    """Batched verification of N sessions against the same sessions one by one."""
    import tempfile

    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir, resolve_draft

    console = Console(stderr=True, width=140)
    counts = [int(x) for x in sessions.split(",")]
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        work = Path(tmp)
        if traces is None:
            trace_path = Path(plot_path).parent / "batching-trace.jsonl"
            trace_path.parent.mkdir(parents=True, exist_ok=True)
            task = progress.add_task("recording traces (real draft + daemon)", total=None)
            cache = default_cache_dir()
            record_traces(resolve_target(None, cache), resolve_draft("default", cache),
                          trace_path, prompts, max_tokens, work)
            progress.remove_task(task)
        else:
            trace_path = Path(traces)
        results = run_batching(counts, trace_path, threads, work, progress)
    print_table(console, results)
    plot(results, Path(plot_path))
    console.print(f"plot: {plot_path}; traces: {trace_path}")
    if as_json:
        print(json.dumps(results))
