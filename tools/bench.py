"""Side-by-side benchmark: target alone (transformers ``generate``), the daemon with draft
length 0, and edgespec, on the same prompts in one run, with token ids checked identical.
With ``--sampling`` all three sample (temperature 0.7, top-p 0.9, one seed per prompt) and
ids are not compared (the distributions are: tests/integration/test_sampling.py).

    tools/bench [--pairs default,hard] [--sets chat,humaneval] [--sampling] [--json]
    tools/bench batching --sessions 1,4,16,64 [--json]      (see bench_batching.py)
    tools/bench distribution [--pair default|tiny] [--draws 10000]  (bench_distribution.py)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from edgespec.edge_client.draft_length import expected_tokens
from edgespec.models.cpu import cpu_model, usable_cores
from edgespec.tools.bench_batching import batching
from edgespec.tools.bench_distribution import distribution, pair_paths
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

METHODS = ("target_generate", "daemon_k0", "edgespec")


@dataclass
class Tally:
    """Tokens and seconds for one method over one prompt set."""

    tokens: int = 0
    seconds: float = 0.0
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def load_prompts(name: str, n: int) -> list[tuple[str, bool]]:
    """(text, raw) pairs: chat prompts go through the chat template, code prompts do not."""
    from edgespec.tools.prompts import CHAT_PROMPTS, humaneval_prompts

    if name == "chat":
        return [(p, False) for p in CHAT_PROMPTS[:n]]
    if name == "humaneval":
        return [(p, True) for p in humaneval_prompts(n)]
    raise click.BadParameter(f"unknown prompt set {name!r}")


SAMPLING = {"temperature": 0.7, "top_k": 0, "top_p": 0.9}


def run_pair(pair: str, sets: list[str], n: int, max_new: int, k: int, threads: int,
             split_threads: int, pipeline: bool, progress: Progress,
             workdir: Path, sampling: bool = False,
             draft_temperature: float | None = None) -> dict[str, Any]:
    from edgespec.edge_client.client import EdgeClient, new_session_id
    from edgespec.edge_client.config import ClientConfig
    from edgespec.edge_client.sampling_setup import SamplingOptions
    from edgespec.edge_client.stats import GenerationStats
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.target_alone import TargetAlone

    draft, target = pair_paths(pair, default_cache_dir())
    daemon = start_daemon(target, workdir / f"verifyd-{pair}.log", threads=split_threads)
    alone = TargetAlone(target, threads)
    client = EdgeClient(ClientConfig(server=daemon.endpoint, draft_path=str(draft),
                                     threads=split_threads, draft_tokens=k, pipeline=pipeline))
    results: dict[str, Any] = {}
    try:
        seed = 0

        def edgespec_run(prompt: list[int], k_max: int, stats: GenerationStats) -> list[int]:
            tokens = list(prompt)
            sid = new_session_id()
            options = (SamplingOptions(**SAMPLING, seed=seed,
                                       draft_temperature=draft_temperature) if sampling
                       else SamplingOptions())
            for _ in client.generate(sid, tokens, max_new, stats, policy=client.new_policy(k_max),
                                     sampling=options.resolve()):
                pass
            client.end_session(sid)
            return tokens[len(prompt):]

        warm = client.drafter.tokenize("Hello")
        alone.greedy(warm, 4, client.stop_ids)
        edgespec_run(warm, k, GenerationStats())
        for set_name in sets:
            prompts = load_prompts(set_name, n)
            tallies = {m: Tally() for m in METHODS}
            spec_stats = GenerationStats()
            task = progress.add_task(f"{pair}/{set_name}", total=len(prompts))
            for seed, (text, raw) in enumerate(prompts, 1):
                ids = (client.drafter.tokenize(text) if raw
                       else client.chat_tokens([{"role": "user", "content": text}]))
                for method in METHODS:
                    t0 = time.perf_counter()
                    if method == "target_generate":
                        out = (alone.sample(ids, max_new, **SAMPLING, seed=seed,
                                            stop_ids=client.stop_ids) if sampling
                               else alone.greedy(ids, max_new, client.stop_ids))
                    else:
                        k_run = 0 if method == "daemon_k0" else k
                        stats = spec_stats if method == "edgespec" else GenerationStats()
                        out = edgespec_run(ids, k_run, stats)
                    tallies[method].seconds += time.perf_counter() - t0
                    tallies[method].tokens += len(out)
                    tallies[method].outputs.append(out)
                progress.advance(task)
            results[set_name] = summarize(tallies, spec_stats, compare_ids=not sampling)
    finally:
        client.close()
        daemon.stop()
    return results


def summarize(tallies: dict[str, Tally], stats: Any, compare_ids: bool = True
              ) -> dict[str, Any]:
    base = tallies["target_generate"]
    identical = all(t.outputs == base.outputs for t in tallies.values()) if compare_ids \
        else None  # sampling: same distribution, not the same ids
    alpha = stats.per_token_acceptance
    mean_k = stats.drafted / stats.rounds if stats.rounds else 0.0
    wall = stats.wall_s or 1.0
    return {
        **{f"{m}_tok_s": round(t.tok_s, 2) for m, t in tallies.items()},
        "speedup_vs_generate": round(tallies["edgespec"].tok_s / base.tok_s, 3),
        "speedup_vs_daemon_k0": round(tallies["edgespec"].tok_s / tallies["daemon_k0"].tok_s, 3),
        "identical_token_ids": identical,
        "tokens": base.tokens,
        "acceptance_rate": round(stats.acceptance_rate, 4),
        "per_token_acceptance": round(alpha, 4),
        "mean_draft_length": round(mean_k, 2),
        "tokens_per_round": round(stats.tokens_per_round, 3),
        "bytes_per_round": round(stats.bytes_per_round, 1),
        "ideal_speedup": round(expected_tokens(alpha, round(mean_k)), 3),
        # Shares of the client's wall time. Drafting and verification overlap when
        # pipelined, so "verify_on_daemon" and "wire_and_daemon_overhead" (round trip minus
        # verification) are measured on the daemon's clock and do not add up with the rest.
        "time_split": {
            "client_drafting": round(stats.draft_s / wall, 3),
            "client_waiting": round(stats.wait_s / wall, 3),
            "client_other": round(
                (wall - stats.draft_s - stats.wait_s - stats.open_s) / wall, 3),
            "open_prefill": round(stats.open_s / wall, 3),
            "verify_on_daemon": round(stats.verify_s / wall, 3),
            "wire_and_daemon_overhead": round((stats.round_trip_s - stats.verify_s) / wall, 3),
        },
        "ahead_tokens_used": f"{stats.ahead_used}/{stats.ahead_drafted}",
        "threads": {"draft": stats.draft_threads, "daemon": stats.daemon_threads,
                    "split": stats.thread_split},
    }


def print_table(console: Console, results: dict[str, Any], caption: str = "") -> None:
    table = Table(title="edgespec vs target alone (tokens/s)", caption=caption)
    for col in ("pair", "set", "generate", "daemon k=0", "edgespec", "× generate",
                "× k=0", "accept", "tok/round", "ideal ×", "identical"):
        table.add_column(col, justify="right")
    for pair, sets in results.items():
        for name, r in sets.items():
            table.add_row(pair, name, f"{r['target_generate_tok_s']:.1f}",
                          f"{r['daemon_k0_tok_s']:.1f}", f"{r['edgespec_tok_s']:.1f}",
                          f"{r['speedup_vs_generate']:.2f}", f"{r['speedup_vs_daemon_k0']:.2f}",
                          f"{r['acceptance_rate']:.1%}", f"{r['tokens_per_round']:.2f}",
                          f"{r['ideal_speedup']:.2f}",
                          {True: "yes", False: "NO", None: "n/a"}[r["identical_token_ids"]])
    console.print(table)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{p}/{s}" for p, sets in results.items() for s in sets]
    rows = [r for sets in results.values() for r in sets.values()]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(labels)), 4))
    width = 0.27
    for i, (method, name) in enumerate(zip(METHODS, ("target generate", "daemon k=0",
                                                      "edgespec"), strict=True)):
        xs = [j + (i - 1) * width for j in range(len(labels))]
        ax.bar(xs, [r[f"{method}_tok_s"] for r in rows], width, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("tokens/s (greedy)")
    ax.set_title("edgespec vs target alone, same machine, one run")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


@click.group(invoke_without_command=True, context_settings={"show_default": True})
@click.option("--pairs", default="default,hard",
              help="Draft/target pairs: default, hard (tiny: random weights, for plumbing).")
@click.option("--sets", "sets_", default="chat,humaneval", help="Prompt sets.")
@click.option("--prompts", "n", type=int, default=6, help="Prompts per set.")
@click.option("--max-tokens", type=int, default=128)
@click.option("--draft-tokens", "-k", type=int, default=16, help="Most tokens per draft.")
@click.option("--threads", type=int, default=2,
              help="Threads for the target-alone baseline (all cores of this box).")
@click.option("--split-threads", type=int, default=1,
              help="Threads for the draft and for verifyd each: they run at the same time "
                   "(0: no thread flags at all, each side's own default split).")
@click.option("--pipeline/--no-pipeline", default=True, help="Draft while verifying.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON line.")
@click.option("--plot", "plot_path", type=click.Path(), default="bench-out/bench.png")
@click.option("--sampling", is_flag=True,
              help="Sample (temperature 0.7, top-p 0.9, seed = prompt number) instead of greedy.")
@click.option("--draft-temperature", type=float, default=None,
              help="With --sampling: the draft's temperature [default: 0.7, a sparse q]; "
                   "0 = argmax draft, one-hot q (ids only on the wire).")
@click.pass_context
def main(ctx: click.Context, pairs: str, sets_: str, n: int, max_tokens: int,
         draft_tokens: int, threads: int, split_threads: int, pipeline: bool, as_json: bool,
         plot_path: str, sampling: bool, draft_temperature: float | None) -> None:
    """Measure edgespec against the target alone, side by side (``batching``: many users)."""
    if ctx.invoked_subcommand is not None:
        return
    console = Console(stderr=True, width=160)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        for pair in pairs.split(","):
            results[pair] = run_pair(pair, sets_.split(","), n, max_tokens, draft_tokens,
                                     threads, split_threads, pipeline, progress, Path(tmp),
                                     sampling, draft_temperature)
    split = (f"draft {split_threads} + verifyd {split_threads} threads" if split_threads
             else "no thread flags (each side's default split)")
    caption = f"{cpu_model()} · {usable_cores()} cores · generate {threads} threads · {split}"
    print_table(console, results, caption)
    plot(results, Path(plot_path))
    console.print(f"plot: {plot_path}")
    if as_json:
        print(json.dumps(results))
    if any(r["identical_token_ids"] is False for s in results.values() for r in s.values()):
        sys.exit("token ids differ from the target alone")


main.add_command(batching)
main.add_command(distribution)

if __name__ == "__main__":
    main()
