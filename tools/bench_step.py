"""The daemon's verify pass against a plain transformers forward, same widths and contexts.

    python -m edgespec.tools.bench_step [--widths 1,8,16,64] [--contexts 300,3000]
        [--sessions 1] [--threads 1] [--json]

For each (context, width) it times, interleaved in one run: ``ModelRunner.run`` over one
session (or ``--sessions`` sessions) holding ``context`` tokens of paged KV and feeding
``width`` new tokens with logits for all of them (a verify pass), and the target's own
forward over the same ``width`` tokens after a ``DynamicCache`` of the same ``context`` (what
``generate`` does per step, with ``logits_to_keep`` = width). The ratio is the daemon's
overhead; the goal is within 10 %. Reports medians of ``--repeats`` runs each.

``--gemm both`` (the default) times the daemon's pass twice, with torch's own linear layers
and with the plan ``verifyd --gemm auto`` uses on this machine (``small_gemm.py``; measured
and cached on first use), so the column ``auto`` / ``plain`` is that plan's gain by width.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any

import click
import torch
from edgespec.models.cpu import cpu_model, usable_cores
from rich.console import Console
from rich.table import Table

# wall time by default; --clock cpu times this process's CPU, which other jobs on a shared
# machine disturb far less (meaningful with --threads 1, where torch runs in this thread)
CLOCK = [time.perf_counter]


@dataclass
class _Chunk:
    """A session's share of a step, as the scheduler would hand it to the runner."""

    blocks: list[int]
    start: int
    tokens: list[int]
    logits: bool = True


def time_runner(runner: Any, sessions: int, context: int, width: int, repeats: int
                ) -> float:
    """Median ms of one verify pass over ``sessions`` sessions, each at ``context`` tokens."""
    g = torch.Generator().manual_seed(0)
    tables: list[list[int]] = []
    for _ in range(sessions):
        table: list[int] = []
        runner.blocks.grow(table, context + width)
        tables.append(table)
        prompt = torch.randint(100, 20000, (context,), generator=g).tolist()
        for start in range(0, context, 512):  # prefill in the daemon's chunk size
            runner.run([_Chunk(table, start, prompt[start:start + 512], logits=False)])
    draft = torch.randint(100, 20000, (width,), generator=g).tolist()
    chunks = [_Chunk(t, context, draft) for t in tables]
    times = []
    for _ in range(repeats + 1):
        t0 = CLOCK[0]()
        runner.run(chunks)
        times.append(1000 * (CLOCK[0]() - t0))
    for table in tables:
        runner.blocks.release(table)
    return statistics.median(times[1:])


def time_plain(model: Any, sessions: int, context: int, width: int, repeats: int) -> float:
    """Median ms of ``sessions`` plain forwards of ``width`` tokens after a ``context`` cache
    (one after another: transformers has no ragged batch of cached sequences)."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20000, (1, context + width), generator=g)
    cache = DynamicCache()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model(ids[:, :context], past_key_values=cache, use_cache=True, logits_to_keep=1)
        times = []
        for _ in range(repeats + 1):
            extra = cache.get_seq_length() - context
            if extra:
                cache.crop(-extra)
            start = CLOCK[0]()
            for _ in range(sessions):
                if cache.get_seq_length() > context:
                    cache.crop(-(cache.get_seq_length() - context))
                model(ids[:, context:], past_key_values=cache, use_cache=True,
                      logits_to_keep=width)
            times.append(1000 * (CLOCK[0]() - start))
    return statistics.median(times[1:])


@click.command(context_settings={"show_default": True})
@click.option("--target", default=None, help="Target snapshot [default: the bundled one].")
@click.option("--widths", default="1,8,16,64")
@click.option("--contexts", default="300,3000")
@click.option("--sessions", type=int, default=1, help="Sessions verified in one pass.")
@click.option("--threads", type=int, default=1, help="torch threads (both sides).")
@click.option("--repeats", type=int, default=7)
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall",
              help="cpu: process CPU time, robust to other jobs (use with --threads 1).")
@click.option("--gemm", type=click.Choice(["both", "auto", "plain"]), default="both",
              help="The daemon's linear layers: torch's (plain), verifyd's default plan "
                   "(auto), or both side by side.")
@click.option("--json", "as_json", is_flag=True)
def main(target: str | None, widths: str, contexts: str, sessions: int, threads: int,
         repeats: int, clock: str, gemm: str, as_json: bool) -> None:
    """Time the daemon's verify pass against a plain transformers forward."""
    CLOCK[0] = time.process_time if clock == "cpu" else time.perf_counter
    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.paths import default_cache_dir, default_draft_gguf
    from edgespec.verify_daemon import small_gemm
    from edgespec.verify_daemon.model_runner import ModelRunner
    from transformers import AutoModelForCausalLM

    path = target or str(ensure_target_snapshot(default_draft_gguf(), default_cache_dir()))
    torch.set_num_threads(threads)
    budget = sessions * (max(int(c) for c in contexts.split(",")) + 128)
    runner = ModelRunner(path, threads=threads, kv_budget_tokens=budget)
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    layers = small_gemm.linears(runner.model)
    plan = (small_gemm.tune(runner.model, default_cache_dir(), cpu_model())
            if gemm != "plain" else {})
    modes = {"both": ("plain", "auto"), "auto": ("auto",), "plain": ("plain",)}[gemm]
    rows = []
    for context in (int(c) for c in contexts.split(",")):
        for width in (int(w) for w in widths.split(",")):
            row: dict[str, Any] = {"context": context, "width": width, "sessions": sessions}
            for mode in modes:  # interleaved by width: load hits both alike
                if mode == "auto":
                    small_gemm.install(layers, plan)
                else:
                    small_gemm.uninstall(layers)
                row[f"daemon_{mode}_ms"] = round(
                    time_runner(runner, sessions, context, width, repeats), 2)
            plain_ms = time_plain(plain, sessions, context, width, repeats)
            daemon_ms = row[f"daemon_{modes[-1]}_ms"]
            row.update(daemon_ms=daemon_ms, plain_ms=round(plain_ms, 2),
                       ratio=round(daemon_ms / plain_ms, 3))
            if len(modes) == 2:
                row["auto_over_plain"] = round(row["daemon_auto_ms"] / row["daemon_plain_ms"], 3)
            rows.append(row)
    machine = {"cpu": cpu_model(), "cores": usable_cores(), "threads": threads, "clock": clock,
               "gemm_plan": small_gemm.describe(plan) if plan else "torch's own"}
    if as_json:
        print(json.dumps({"machine": machine, "rows": rows}))
        return
    table = Table(title=f"verify pass vs plain forward (ms) · {machine['cpu']} · "
                        f"{machine['cores']} cores · torch {threads} thread(s)")
    names = [f"verifyd ({m})" for m in modes]
    for col in ("context", "width", "sessions", *names, "plain forward", "ratio",
                *(["auto / plain"] if len(modes) == 2 else [])):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["context"]), str(r["width"]), str(r["sessions"]),
                      *(f"{r[f'daemon_{m}_ms']:.1f}" for m in modes),
                      f"{r['plain_ms']:.1f}", f"{r['ratio']:.2f}",
                      *([f"{r['auto_over_plain']:.2f}"] if len(modes) == 2 else []))
    console = Console()
    console.print(table)
    console.print(f"ratio: the last verifyd column over the plain forward; plan: "
                  f"{machine['gemm_plan']}")


if __name__ == "__main__":
    main()
