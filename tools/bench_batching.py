"""``tools/bench batching``: the capacity of one verifyd with N concurrent sessions against
what an operator would otherwise run: the same N answers decoded target-only by verifyd at
draft length 0 and by transformers' continuous batching (``tools/cb_engine.py``, same
weights, dtype and threads).

Drafts come from traces recorded with the real client and the real default and hard drafts
(recorded here first unless given), one distinct prompt per session (chat and HumanEval), and
are replayed by ``tools/replay``, so no draft model competes with the daemon for the cores.
For each N it reports generated tokens/s, each session's own tokens/s (p50 and p10), target
forward passes per generated token and peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import click
from edgespec.tools.bound import VerifyCost, best_batched
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

SYSTEMS = ("edgespec_default", "edgespec_hard", "verifyd_k0", "cb_engine")
# The fields of each system at each N in --json (README's "Many users" documents each).
SYSTEM_FIELDS = ("tok_s", "session_tok_s_p50", "session_tok_s_p10", "forwards_per_token",
                 "peak_rss_mb", "tokens", "wall_s", "diverged", "errors", "bound_tok_s",
                 "bound_k", "measured_over_bound")
BOUND_WIDTHS = (1, 4, 16, 64, 256, 1088)  # up to 64 sessions x (16 drafts + 1)


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
    """Resident KB of ``pid`` now; 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load_limits(sessions: int) -> list[str]:
    """verifyd flags that let one loopback load generator hold ``sessions`` sessions: the
    per-address and per-connection caps are for strangers, not for a benchmark."""
    return ["--max-sessions", str(sessions), "--max-sessions-per-address", str(sessions),
            "--max-connections-per-address", str(sessions + 8),
            "--max-prefill-per-address", str(1 << 22)]


def record_traces(target: Path, draft: Path, path: Path, prompts: int, max_tokens: int,
                  workdir: Path, client_flags: tuple[str, ...] = ()) -> None:
    """Real client, real daemon (a core each), k up to 16: one distinct prompt a session,
    the chat set first (12 prompts at most), then HumanEval; ``client_flags`` go to
    ``edgespec generate`` (e.g. a draft shape)."""
    from edgespec.tools.bench import load_prompts
    from edgespec.tools.daemon_proc import start_daemon

    n_chat = min(prompts // 2, 12)
    lines = [{"id": f"chat{i}", "prompt": p} for i, (p, _raw) in
             enumerate(load_prompts("chat", n_chat))]
    lines += [{"id": f"code{i}", "prompt": p, "raw": True} for i, (p, _raw) in
              enumerate(load_prompts("humaneval", prompts - n_chat))]
    prompt_file = workdir / "prompts.jsonl"
    prompt_file.write_text("\n".join(json.dumps(x) for x in lines))
    daemon = start_daemon(target, workdir / "verifyd-record.log", threads=1)
    try:
        subprocess.run([sys.executable, "-m", "edgespec.edge_client.cli", "generate",
                        "--server", daemon.endpoint, "--draft", str(draft), "--threads", "1",
                        "--prompt-file", str(prompt_file), "--max-tokens", str(max_tokens),
                        "--trace", str(path), "--json", *client_flags], check=True,
                       capture_output=True,
                       timeout=3600)
    finally:
        daemon.stop()


@dataclass(frozen=True, slots=True)
class Recording:
    """How to record one set of traces that was not given: its file (beside the plot), the
    draft pair, the client's extra flags and what the progress bar says."""

    file: str
    pair: str
    client_flags: tuple[str, ...]
    label: str


def traces_for(given: dict[str, str | None], plans: dict[str, Recording], out_dir: Path,
               workdir: Path, prompts: int, max_tokens: int, progress: Progress
               ) -> dict[str, Path]:
    """The given trace files, and the others recorded now as ``plans`` say."""
    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir, resolve_draft

    paths: dict[str, Path] = {}
    for name, path in given.items():
        if path is not None:
            paths[name] = Path(path)
            continue
        plan = plans[name]
        paths[name] = out_dir / plan.file
        out_dir.mkdir(parents=True, exist_ok=True)
        task = progress.add_task(f"recording {plan.label} (real draft + daemon)", total=None)
        cache = default_cache_dir()
        record_traces(resolve_target(None, cache), resolve_draft(plan.pair, cache), paths[name],
                      prompts, max_tokens, workdir, plan.client_flags)
        progress.remove_task(task)
    return paths


def read_stats(path: Path) -> dict[str, Any]:
    time.sleep(1.3)  # the daemon rewrites its stats file about once a second
    return dict(json.loads(path.read_text()))


def system_row(tokens: int, wall_s: float, session_tok_s: list[float], forwards: int,
               peak_rss_kb: int, diverged: int, errors: dict[str, int]) -> dict[str, Any]:
    """One system at one N, as SYSTEM_FIELDS (p10: the slowest tenth of sessions)."""
    from edgespec.tools.replay import percentile

    return {"tok_s": round(tokens / wall_s if wall_s else 0.0, 2),
            "session_tok_s_p50": round(percentile(session_tok_s, 50), 2),
            "session_tok_s_p10": round(percentile(session_tok_s, 10), 2),
            "forwards_per_token": round(forwards / tokens if tokens else 0.0, 4),
            "peak_rss_mb": round(peak_rss_kb / 1024, 1), "tokens": tokens,
            "wall_s": round(wall_s, 2), "diverged": diverged, "errors": errors,
            "bound_tok_s": 0.0, "bound_k": 0, "measured_over_bound": 0.0}


def acceptance(sessions: list[list[dict[str, Any]]]) -> float:
    """Per-token acceptance of recorded rounds (the geometric estimate the client uses)."""
    rounds = [r for records in sessions for r in records if r["kind"] == "round"]
    accepted = sum(r["accepted"] for r in rounds)
    misses = sum(r["accepted"] < len(r["draft"]) for r in rounds)
    return accepted / (accepted + misses) if accepted + misses else 0.0


def add_bound(row: dict[str, Any], verify: VerifyCost, a: float, sessions: int,
              prompt_tokens: int, k_max: int) -> None:
    """Measured / the best tokens/s N sessions could reach at this acceptance (bound.py)."""
    tok_s, k = best_batched(verify, a, sessions, row["tokens"], prompt_tokens, k_max)
    row.update(bound_tok_s=round(tok_s, 2), bound_k=k,
               measured_over_bound=round(row["tok_s"] / tok_s, 3) if tok_s else 0.0)


def measure(run: Callable[[], tuple[Any, float]], stats_path: Path, pid: int
            ) -> dict[str, Any]:
    """One replay run against verifyd (forward passes from its stats file)."""
    before = read_stats(stats_path)
    with RssSampler(pid) as rss:
        tally, wall = run()
    after = read_stats(stats_path)
    return system_row(tally.accepted + tally.rounds, wall, tally.session_tok_s,
                      after["steps"] - before["steps"], rss.peak_kb, tally.diverged_rounds,
                      dict(tally.errors))


def answers(records: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """A recorded session's prompt and the target's verified answer."""
    prompt = list(records[0]["tokens"])
    out: list[int] = []
    for r in records[1:]:
        if r["kind"] == "round":
            out += [*r["draft"][:r["accepted"]], r["next_token"]]
    return prompt, out


def run_engine(target: str, threads: int, sessions: list[list[dict[str, Any]]],
               eos_ids: list[int], workdir: Path) -> dict[str, Any]:
    """The same answers from transformers' continuous batching, in its own process; an
    answer that differs from the recording counts as diverged."""
    pairs = [answers(records) for records in sessions]
    job = workdir / "cb-job.json"
    job.write_text(json.dumps({"prompts": [p for p, _ in pairs],
                               "max_new_tokens": [max(1, len(a)) for _, a in pairs],
                               "eos_ids": eos_ids}))
    out = workdir / "cb-out.json"
    with out.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgespec.tools.cb_engine", "--target", target,
             "--threads", str(threads), str(job)], stdout=sink, stderr=subprocess.DEVNULL)
        with RssSampler(process.pid) as rss:
            if process.wait(3600) != 0:
                raise click.ClickException("continuous batching failed (tools/cb_engine.py)")
    result = json.loads(out.read_text().strip().splitlines()[-1])
    diverged = sum(o != a for o, (_, a) in zip(result["outputs"], pairs, strict=True))
    return system_row(sum(len(o) for o in result["outputs"]), result["wall_s"],
                      result["session_tok_s"], result["forwards"], rss.peak_kb, diverged, {})


def batch_verify_cost(target: str, threads: int, context: list[int]) -> VerifyCost:
    """V(w) of one plain forward over w tokens, up to a full batch, in this process."""
    import torch
    from edgespec.tools.costs import verify_cost
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    cost = verify_cost(model, threads, context, widths=BOUND_WIDTHS, repeats=3)
    del model
    return cost


def run_batching(counts: list[int], traces: dict[str, Path], threads: int, workdir: Path,
                 progress: Progress) -> dict[str, Any]:
    """Every system at every N, each against a fresh verifyd (the engine: its own process)."""
    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.replay import as_target_only, load_sessions, replay
    from transformers import GenerationConfig

    recorded = {pair: load_sessions((str(path),)) for pair, path in traces.items()}
    for pair, sessions in recorded.items():
        if not sessions:
            raise click.ClickException(f"no sessions in {traces[pair]}")
    target = str(resolve_target(None, default_cache_dir()))
    verify = batch_verify_cost(target, threads, recorded["default"][0][0]["tokens"][:32])
    eos = GenerationConfig.from_pretrained(target).eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    stats_path = workdir / "stats.json"
    # Warm-up on a prompt no run uses (the first one reversed: its one round diverges and
    # the session stops), so no system finds the prompts it is measured on already cached.
    warm = [dict(r) for r in as_target_only(recorded["default"][0])]
    warm[0]["tokens"] = list(reversed(warm[0]["tokens"]))

    def fresh_daemon() -> Any:
        """A new verifyd for every system and N: one daemon's prefix cache would hand each
        later run the prompts' KV for free (the engine, in its own process, gets none)."""
        daemon = start_daemon(target, workdir / "verifyd-batching.log",
                              *load_limits(max(counts)), "--stats-file", str(stats_path),
                              threads=threads)
        replay(daemon.endpoint, [warm], 1, "fast", 600.0)
        return daemon

    results: dict[str, Any] = {}
    task = progress.add_task("sessions", total=len(counts) * len(SYSTEMS))
    for n in counts:
        row: dict[str, Any] = {}
        for system in SYSTEMS:
            pair = "hard" if system == "edgespec_hard" else "default"
            # One distinct prompt a session; past the recorded count, copies (flagged).
            sessions = [recorded[pair][i % len(recorded[pair])] for i in range(n)]
            if system == "cb_engine":
                row[system] = run_engine(target, threads, sessions, eos_ids, workdir)
            else:
                if system == "verifyd_k0":
                    sessions = [as_target_only(records) for records in sessions]
                daemon = fresh_daemon()
                try:
                    row[system] = measure(partial(replay, daemon.endpoint, sessions, n,
                                                  "fast", 600.0), stats_path,
                                          daemon.process.pid)
                finally:
                    daemon.stop()
            drafted = system.startswith("edgespec")
            add_bound(row[system], verify, acceptance(sessions) if drafted else 0.0, n,
                      sum(len(records[0]["tokens"]) for records in sessions),
                      16 if drafted else 0)
            progress.advance(task)
        row["verify_ms_by_width"] = {str(w): round(1000 * t, 1) for w, t in
                                     zip(verify.widths, verify.seconds, strict=True)}
        base = row["cb_engine"]["tok_s"]
        row["vs_engine"] = {s: round(row[s]["tok_s"] / base, 3) if base else 0.0
                            for s in SYSTEMS}
        row["distinct_prompts"] = min(n, *(len(r) for r in recorded.values()))
        results[str(n)] = row
    return results


def print_table(console: Console, results: dict[str, Any], caption: str = "") -> None:
    table = Table(title="N sessions on one server: generated tokens/s, each session's tokens/s "
                  "(p50 / p10), forwards per token, peak RSS", caption=caption)
    for col in ("N", "system", "tok/s", "× engine", "bound", "/bound", "session p50",
                "session p10", "fwd/token", "peak RSS MB", "diverged"):
        table.add_column(col, justify="right")
    for n, row in results.items():
        for system in SYSTEMS:
            r = row[system]
            table.add_row(n, system.replace("_", " "), f"{r['tok_s']:.1f}",
                          f"{row['vs_engine'][system]:.2f}", f"{r['bound_tok_s']:.1f}",
                          f"{r['measured_over_bound']:.2f}", f"{r['session_tok_s_p50']:.2f}",
                          f"{r['session_tok_s_p10']:.2f}", f"{r['forwards_per_token']:.3f}",
                          f"{r['peak_rss_mb']:.0f}", str(r["diverged"]))
        if row["distinct_prompts"] < int(n):
            table.add_row(n, f"(only {row['distinct_prompts']} distinct prompts)", *[""] * 9)
    console.print(table)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for system, style in zip(SYSTEMS, ("o-", "s-", "^--", "v--"), strict=True):
        label = system.replace("_", " ")
        ax1.plot(counts, [results[n][system]["tok_s"] for n in counts], style, label=label)
        ax2.plot(counts, [results[n][system]["session_tok_s_p10"] for n in counts], style,
                 label=label)
    ax1.set_ylabel("generated tokens/s (all sessions)")
    ax2.set_ylabel("p10 of each session's tokens/s")
    for ax in (ax1, ax2):
        ax.set_xlabel("concurrent sessions")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    ax1.set_title("capacity, one server, one run")
    ax2.set_title("the slow tail of sessions")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


@click.command(context_settings={"show_default": True})
@click.option("--sessions", default="1,4,16,64", help="Concurrent session counts.")
@click.option("--traces", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Default-pair traces [default: record bench-out/batching-trace.jsonl].")
@click.option("--hard-traces", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Hard-pair traces [default: record bench-out/batching-trace-hard.jsonl].")
@click.option("--prompts", type=int, default=64,
              help="Distinct prompts to record when recording.")
@click.option("--max-tokens", type=int, default=64, help="Tokens per recorded answer.")
@click.option("--threads", type=int, default=1,
              help="torch threads of verifyd and of the engine (1: the daemon's share of a "
                   "2-core box; on a shared box 2-thread teams stall at every barrier).")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: one JSON object.")
@click.option("--plot", "plot_path", type=click.Path(), default="bench-out/batching.png")
def batching(sessions: str, traces: str | None, hard_traces: str | None, prompts: int,
             max_tokens: int, threads: int, as_json: bool, plot_path: str) -> None:
    """N sessions with drafts against the same answers target-only (verifyd k=0 and
    transformers' continuous batching)."""
    import tempfile

    from edgespec.models.cpu import cpu_model, usable_cores

    console = Console(stderr=True, width=140)
    counts = [int(x) for x in sessions.split(",")]
    out_dir = Path(plot_path).parent
    given = {"default": traces, "hard": hard_traces}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        work = Path(tmp)
        paths = traces_for(given, {pair: Recording(
            "batching-trace.jsonl" if pair == "default" else f"batching-trace-{pair}.jsonl",
            pair, (), f"{pair}-pair traces") for pair in given}, out_dir, work, prompts,
            max_tokens, progress)
        results = run_batching(counts, paths, threads, work, progress)
    caption = (f"{cpu_model()} · {usable_cores()} cores · verifyd and engine {threads} threads "
               f"each, one at a time · float32 · load {os.getloadavg()[0]:.1f}")
    print_table(console, results, caption)
    plot(results, Path(plot_path))
    console.print(f"plot: {plot_path}; traces: {', '.join(map(str, paths.values()))}")
    if as_json:
        print(json.dumps(results))
