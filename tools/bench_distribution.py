"""``tools/bench distribution``: the sampling test's chi-square on a chosen model pair.

CI runs it on the tiny pair (tests/integration/test_sampling.py); this is the slower
benchmark of the same on the real SmolLM2 pair (about a quarter of a second a draw here),
with the power against the hardest 2 % error reported beside each p-value and the observed
frequencies plotted against the exact ones.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

MODES = {"sparse": None, "one-hot": 0.0}  # the draft temperature that gives each q mode


def pair_paths(pair: str, cache: Path) -> tuple[Path, str]:
    """(draft GGUF, target for ``verifyd --target``) of ``default``, ``hard``, ``tiny`` or
    ``cross`` (the default SmolLM2 draft before Gemma 3 270M: another tokenizer)."""
    from edgespec.models.convert import ensure_target_snapshot, resolve_target
    from edgespec.models.paths import resolve_draft

    if pair == "tiny":
        from edgespec.models.tiny_pair import ensure_tiny_pair

        tiny = ensure_tiny_pair(cache)
        return tiny.draft_gguf, str(ensure_target_snapshot(tiny.target_gguf, cache))
    if pair == "cross":
        return resolve_draft("default", cache), resolve_target("gemma", cache)
    return resolve_draft(pair, cache), resolve_target(None, cache)


def print_table(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="first two tokens: edgespec sampling vs the target alone's exact law")
    for name in ("q mode", "draws", "χ²", "df", "p", "p vs 2% error", "power", "acceptance",
                 "B/round", "ms/draw"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(r["mode"], str(r["draws"]), f"{r['chi_square']:.2f}", str(r["df"]),
                      f"{r['p_value']:.3f}", f"{r['p_value_vs_2pct_error']:.2g}",
                      f"{r['power_vs_2pct_error']:.1%}", f"{r['acceptance_rate']:.1%}",
                      f"{r['bytes_per_round']:.0f}", f"{r['ms_per_draw']:.1f}")
    console.print(table)


def plot(law: dict[tuple[int, int], float], observed: dict[str, Counter[tuple[int, int]]],
         draws: int, labels: dict[tuple[int, int], str], path: Path) -> None:
    """Exact against observed frequency of the likeliest cells, one bar group per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted(law, key=law.__getitem__, reverse=True)[:9]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / (1 + len(observed))
    ax.bar([i - 0.4 + width / 2 for i in range(len(cells))], [law[c] for c in cells], width,
           label="target alone (exact)")
    for j, (mode, counts) in enumerate(observed.items(), 1):
        ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(cells))],
               [counts[c] / draws for c in cells], width, label=f"edgespec, {mode}")
    ax.set_xticks(range(len(cells)), [labels[c] for c in cells], rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("probability (log scale)")
    ax.set_title(f"first two generated tokens, {draws} draws per q mode")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


@click.command(context_settings={"show_default": True})
@click.option("--pair", type=click.Choice(["default", "hard", "tiny"]), default="default",
              help="Draft/target pair (tiny: the random-weight pair CI uses).")
@click.option("--draws", type=int, default=10000, help="Draws per q mode.")
@click.option("--modes", default="sparse,one-hot", help="q modes: sparse, one-hot.")
@click.option("--threads", type=int, default=1, help="Threads for the draft and verifyd each.")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: one JSON object.")
@click.option("--plot", "plot_path", type=click.Path(), default="bench-out/distribution.png")
def distribution(pair: str, draws: int, modes: str, threads: int, as_json: bool,
                 plot_path: str) -> None:
    """Chi-square of edgespec's first two sampled tokens against the target alone."""
    from edgespec.edge_client.client import EdgeClient
    from edgespec.edge_client.config import ClientConfig
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.distribution import PROMPT, check_mode, describe, exact_first_two
    from edgespec.tools.target_alone import TargetAlone

    wanted = modes.split(",")
    if unknown := set(wanted) - set(MODES):
        raise click.BadParameter(f"unknown q mode(s) {sorted(unknown)}", param_hint="--modes")
    console = Console(stderr=True, width=160)
    draft, target = pair_paths(pair, default_cache_dir())
    rows: list[dict[str, Any]] = []
    observed: dict[str, Counter[tuple[int, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(target, Path(tmp) / "verifyd.log", threads=threads)
        client = EdgeClient(ClientConfig(server=daemon.endpoint, draft_path=str(draft),
                                         threads=threads, draft_tokens=4))
        try:
            prompt = client.drafter.tokenize(PROMPT)
            law = exact_first_two(TargetAlone(target, threads), prompt, client.stop_ids)
            with Progress(console=console) as progress:
                for mode in wanted:
                    task = progress.add_task(f"{pair}, {mode} q", total=draws)
                    check, counts = check_mode(client, law, prompt, draws, MODES[mode],
                                               advance=lambda t=task: progress.advance(t))
                    rows.append({"pair": pair, **asdict(check)})
                    observed[check.mode] = counts
                    console.print(describe(check))
            text = client.drafter.detokenize
            labels = {c: " | ".join(repr(text([t]).decode(errors="replace")) if t >= 0
                                    else "(end)" for t in c) for c in law}
        finally:
            client.close()
            daemon.stop()
    print_table(console, rows)
    plot(law, observed, draws, labels, Path(plot_path))
    console.print(f"plot: {plot_path}")
    if as_json:
        print(json.dumps({r["mode"]: r for r in rows}))
