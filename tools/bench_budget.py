"""``tools/bench budget``: does the VERDICT's budget keep a busy server's capacity when the
clients draft token trees instead of chains?

Trees spend more tokens a round to accept more of them; on a CPU a pass costs time in
proportion to its tokens, so N clients drafting trees could lower what one server verifies
a second. The daemon answers with a per-session budget (``verify_daemon/draft_budget.py``).
This bench records the hard pair (the draft that misses often, where trees are meant to pay)
twice with the real client, as chains and as trees (``--draft-shape``), then replays N
sessions of each against a fresh verifyd under each budget rule, every draft cut to the
budget its session was last given, as a live client cuts it (``tools/budget_replay.py``).
Greedy throughout, so every verdict is checked against the recording.

    tools/bench budget [--sessions 16,64] [--rules share,goodput] [--prompts 16] [--json]
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

SHAPES = ("chain", "tree")


def run_one(target: str, sessions: list[list[dict[str, Any]]], n: int, rule: str,
            threads: int, workdir: Path) -> dict[str, Any]:
    """N budget-honouring replays against a fresh verifyd with ``--draft-budget rule``."""
    from edgespec.tools.bench_batching import load_limits, read_stats
    from edgespec.tools.budget_replay import BudgetReplayer
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.replay import as_target_only, replay

    stats_path = workdir / "stats.json"
    daemon = start_daemon(target, workdir / "verifyd-budget.log", *load_limits(n),
                          "--stats-file", str(stats_path), "--draft-budget", rule,
                          threads=threads)
    try:
        warm = [dict(r) for r in as_target_only(sessions[0])]
        warm[0]["tokens"] = list(reversed(warm[0]["tokens"]))  # a prompt no run uses
        replay(daemon.endpoint, [warm], 1, "fast", 600.0)
        before = read_stats(stats_path)
        start = time.perf_counter()
        tally, wall = replay(daemon.endpoint, [sessions[i % len(sessions)] for i in range(n)],
                             n, "fast", 600.0, replayer=BudgetReplayer)
        wall = time.perf_counter() - start
        after = read_stats(stats_path)
    finally:
        daemon.stop()
    tokens = tally.accepted + tally.rounds
    steps = after["steps"] - before["steps"]
    return {"tok_s": round(tokens / wall, 2) if wall else 0.0, "tokens": tokens,
            "wall_s": round(wall, 2), "rounds": tally.rounds,
            "tokens_per_round": round(tokens / tally.rounds, 3) if tally.rounds else 0.0,
            "draft_per_round": round(tally.drafted / tally.rounds, 3) if tally.rounds else 0.0,
            "forward_tokens_per_step": round((after["forward_tokens"] - before["forward_tokens"])
                                             / steps, 1) if steps else 0.0,
            "goodput_steps": after.get("goodput_steps", 0) - before.get("goodput_steps", 0),
            "steps": steps, "diverged": tally.diverged_rounds, "errors": dict(tally.errors)}


def run_budget(counts: list[int], rules: list[str], traces: dict[str, Path], threads: int,
               workdir: Path, progress: Progress) -> dict[str, Any]:
    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.replay import load_sessions

    recorded = {shape: load_sessions((str(path),)) for shape, path in traces.items()}
    target = str(resolve_target(None, default_cache_dir()))
    task = progress.add_task("replays", total=len(counts) * len(rules) * len(SHAPES))
    results: dict[str, Any] = {}
    for n in counts:
        for rule in rules:
            row: dict[str, Any] = {}
            for shape in SHAPES:
                row[shape] = run_one(target, recorded[shape], n, rule, threads, workdir)
                progress.advance(task)
            chain = row["chain"]["tok_s"]
            row["tree_over_chain"] = round(row["tree"]["tok_s"] / chain, 3) if chain else 0.0
            results[f"{n}/{rule}"] = row
    return results


def print_table(console: Console, results: dict[str, Any], caption: str) -> None:
    table = Table(title="Hard pair, N greedy sessions replayed with each draft cut to its "
                  "budget: server tokens/s, chains vs trees", caption=caption)
    for col in ("N", "budget rule", "shape", "tok/s", "tokens/round", "draft/round",
                "tokens/step", "goodput steps", "tree ÷ chain", "diverged"):
        table.add_column(col, justify="right")
    for key, row in results.items():
        n, rule = key.split("/")
        for shape in SHAPES:
            r = row[shape]
            table.add_row(n, rule, shape, f"{r['tok_s']:.1f}", f"{r['tokens_per_round']:.2f}",
                          f"{r['draft_per_round']:.1f}", f"{r['forward_tokens_per_step']:.0f}",
                          f"{r['goodput_steps']}/{r['steps']}",
                          f"{row['tree_over_chain']:.2f}" if shape == "tree" else "",
                          str(r["diverged"]))
    console.print(table)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.4
    for i, shape in enumerate(SHAPES):
        ax.bar([x + (i - 0.5) * width for x in range(len(keys))],
               [results[k][shape]["tok_s"] for k in keys], width, label=shape)
    ax.set_xticks(range(len(keys)), [k.replace("/", " sessions, ") for k in keys])
    ax.set_ylabel("verified tokens/s (all sessions)")
    ax.set_title("hard pair under the daemon's budget: chains vs trees")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


@click.command(context_settings={"show_default": True})
@click.option("--sessions", default="16,64", help="Concurrent session counts.")
@click.option("--rules", default="share,goodput", help="verifyd --draft-budget rules to run.")
@click.option("--chain-traces", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Hard-pair chain traces [default: record bench-out/budget-chain.jsonl].")
@click.option("--tree-traces", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Hard-pair tree traces [default: record bench-out/budget-tree.jsonl].")
@click.option("--prompts", type=int, default=16, help="Distinct prompts to record.")
@click.option("--max-tokens", type=int, default=48, help="Tokens per recorded answer.")
@click.option("--threads", type=int, default=1, help="torch threads of verifyd.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: one JSON object.")
@click.option("--plot", "plot_path", type=click.Path(), default="bench-out/budget.png")
def budget(sessions: str, rules: str, chain_traces: str | None, tree_traces: str | None,
           prompts: int, max_tokens: int, threads: int, as_json: bool, plot_path: str) -> None:
    """Server capacity with trees against chains, under each VERDICT budget rule."""
    from edgespec.models.cpu import cpu_model, usable_cores
    from edgespec.tools.bench_batching import Recording, traces_for

    console = Console(stderr=True, width=140)
    counts = [int(x) for x in sessions.split(",")]
    rule_list = [r.strip() for r in rules.split(",")]
    out_dir = Path(plot_path).parent
    given = {"chain": chain_traces, "tree": tree_traces}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        work = Path(tmp)
        paths = traces_for(given, {shape: Recording(
            f"budget-{shape}.jsonl", "hard", ("--draft-shape", shape), f"hard-pair {shape}s")
            for shape in given}, out_dir, work, prompts, max_tokens, progress)
        results = run_budget(counts, rule_list, paths, threads, work, progress)
    caption = (f"{cpu_model()} · {usable_cores()} cores · verifyd {threads} thread(s), replays "
               f"on the other core · float32 · load {os.getloadavg()[0]:.1f}")
    print_table(console, results, caption)
    plot(results, Path(plot_path))
    console.print(f"plot: {plot_path}; traces: {', '.join(map(str, paths.values()))}")
    if as_json:
        print(json.dumps(results))
