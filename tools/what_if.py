"""``tools/replay what-if``: server capacity as a function of acceptance α, draft length k
and sessions N, on any target, with no draft model.

Drafts are made from the target's own greedy continuation (decoded first by the same
verifyd at draft length 0): each round proposes the next ``k`` tokens of that continuation
with every token replaced, with probability 1 − α, by another one. Greedy verification
accepts exactly up to the first replaced token, so per-token acceptance is α by
construction and each verdict is known in advance: replay checks it, and a mismatch
(a wide pass whose argmax differs from the one-token pass's) shows up as "diverged".

The target can be a real one (``--target DIR``) or random weights of a real shape
(``--shape llama-3-8b``; ``tiny`` for a CPU), built once into the cache with the SmolLM2
tokenizer (only ids below its vocabulary are used). Capacity is compared with the same
answers at k = 0 on the same daemon.

    tools/replay what-if --shape tiny --alphas 0.6,0.8 --draft-tokens 4,8 --sessions 1,16
    tools/replay what-if --shape llama-3-8b --dtype bfloat16 --device cuda --sessions 16,64
"""

from __future__ import annotations

import json
import os
import random
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

Record = dict[str, Any]

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 49152,
             "max_position_embeddings": 8192},
    "llama-3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8,
                   "vocab_size": 128256, "max_position_embeddings": 8192,
                   "rope_theta": 500000.0, "rms_norm_eps": 1e-5},
}


def controlled_drafts(session: str, prompt: list[int], answer: list[int], alpha: float,
                      k: int, vocab: int, rng: random.Random) -> list[Record]:
    """A trace whose drafts follow ``answer`` with each token wrong with probability 1 − α;
    the recorded verdict is what greedy verification must answer."""
    records: list[Record] = [{"kind": "open", "session": session, "t": 0.0,
                              "tokens": list(prompt), "max_new_tokens": len(answer)}]
    pos = 0
    while pos < len(answer):
        k_round = min(k, len(answer) - pos - 1)
        draft = list(answer[pos:pos + k_round])
        accepted = k_round
        for i in range(k_round):
            if rng.random() >= alpha:
                draft[i] = (draft[i] + rng.randrange(1, vocab)) % vocab  # never the same id
                accepted = min(accepted, i)
        records.append({"kind": "round", "session": session, "t": 0.0,
                        "base_length": len(prompt) + pos, "draft": draft,
                        "accepted": accepted, "next_token": answer[pos + accepted]})
        pos += accepted + 1
    return records


def target_continuations(endpoint: str, prompts: list[list[int]], max_new: int,
                         stop_ids: set[int], timeout_s: float) -> list[list[int]]:
    """Each prompt's greedy answer from the daemon at draft length 0 (all at once), cut
    after a stop token."""
    from concurrent.futures import ThreadPoolExecutor

    from edgespec.tools.replay import Replayer

    replayers = []
    for i, prompt in enumerate(prompts):
        records: list[Record] = [{"kind": "open", "session": str(i), "t": 0.0,
                                  "tokens": prompt, "max_new_tokens": max_new}]
        records += [{"kind": "round", "session": str(i), "t": 0.0,
                     "base_length": len(prompt) + j, "draft": [], "accepted": 0,
                     "next_token": -1, "unchecked": True} for j in range(max_new)]
        replayers.append(Replayer(endpoint, records, "fast", timeout_s))
    with ThreadPoolExecutor(max_workers=len(replayers)) as pool:
        list(pool.map(Replayer.run, replayers))
    answers = []
    for prompt, r in zip(prompts, replayers, strict=True):
        answer = r.history[len(prompt):]
        stop = next((i for i, t in enumerate(answer) if t in stop_ids), None)
        answers.append(answer if stop is None else answer[:stop + 1])
    return answers


def random_target(shape: str, dtype: str, cache: Path) -> Path:
    """Random weights of a named shape (seed 0) with SmolLM2's tokenizer, built once."""
    out = cache / "what-if" / f"{shape}-{dtype}-v1"
    if (out / "config.json").exists():
        return out
    import torch
    from edgespec.models.convert import resolve_target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(resolve_target(None, cache))
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def prompt_ids(target: str, n: int) -> list[list[int]]:
    """``n`` distinct prompts (chat, then HumanEval), tokenized by the target's tokenizer."""
    from edgespec.tools.bench import load_prompts
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    n_chat = min(n // 2, 12)
    texts = [t for t, _ in load_prompts("chat", n_chat)]
    texts += [t for t, _ in load_prompts("humaneval", n - n_chat)]
    return [tokenizer(t)["input_ids"] for t in texts]


def run_what_if(target: str, alphas: list[float], ks: list[int], counts: list[int],
                max_new: int, threads: int, device: str, dtype: str, workdir: Path,
                progress: Progress) -> dict[str, Any]:
    from edgespec.tools.bench_batching import add_bound, batch_verify_cost, load_limits, measure
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.replay import as_target_only, replay
    from transformers import AutoConfig, AutoTokenizer

    vocab = min(AutoConfig.from_pretrained(target).vocab_size,
                len(AutoTokenizer.from_pretrained(target)))
    stats_path = workdir / "stats.json"
    daemon = start_daemon(target, workdir / "verifyd-what-if.log", *load_limits(max(counts)),
                          "--stats-file", str(stats_path), "--device", device,
                          "--dtype", dtype, threads=threads, timeout_s=1800.0)
    pid = daemon.process.pid
    results: dict[str, Any] = {}
    try:
        from edgespec.verify_daemon.model_runner import stop_token_ids  # daemon's own rule

        tokenizer = AutoTokenizer.from_pretrained(target)
        stops = set(stop_token_ids(tokenizer, None))
        task = progress.add_task("target's greedy answers (k = 0)", total=None)
        prompts = prompt_ids(target, max(counts))
        answers = target_continuations(daemon.endpoint, prompts, max_new, stops, 600.0)
        # The bound's V(w) is measured in this process, so only where the daemon runs here.
        verify = batch_verify_cost(target, threads, prompts[0][:32]) if device == "cpu" \
            else None
        progress.remove_task(task)
        task = progress.add_task("what-if", total=len(counts) * (1 + len(alphas) * len(ks)))
        for n in counts:
            rng = random.Random(n)
            row: dict[str, Any] = {}
            for alpha in alphas:
                for k in ks:
                    traces = [controlled_drafts(str(i), prompts[i], answers[i], alpha, k,
                                                vocab, rng) for i in range(n)]
                    if "k0" not in row:
                        k0 = [as_target_only(t) for t in traces]
                        row["k0"] = measure(partial(replay, daemon.endpoint, k0, n, "fast",
                                                    600.0), stats_path, pid)
                        if verify is not None:
                            add_bound(row["k0"], verify, 0.0, n, prompt_tokens(traces), 0)
                        progress.advance(task)
                    m = measure(partial(replay, daemon.endpoint, traces, n, "fast", 600.0),
                                stats_path, pid)
                    if verify is not None:
                        add_bound(m, verify, alpha, n, prompt_tokens(traces), k)
                    m["vs_k0"] = round(m["tok_s"] / row["k0"]["tok_s"], 3) \
                        if row["k0"]["tok_s"] else 0.0
                    row[f"a{alpha:g}_k{k}"] = m
                    progress.advance(task)
            results[str(n)] = row
    finally:
        daemon.stop()
    return results


def prompt_tokens(traces: list[list[Record]]) -> int:
    return sum(len(records[0]["tokens"]) for records in traces)


def print_table(console: Console, results: dict[str, Any], caption: str) -> None:
    table = Table(title="what-if capacity: controlled acceptance α, draft length k, N sessions",
                  caption=caption)
    for col in ("N", "drafts", "tok/s", "× k=0", "bound", "/bound", "session p50",
                "session p10", "fwd/token", "peak RSS MB", "diverged"):
        table.add_column(col, justify="right")
    for n, row in results.items():
        for name, r in row.items():
            table.add_row(n, name, f"{r['tok_s']:.1f}", f"{r.get('vs_k0', 1.0):.2f}",
                          f"{r['bound_tok_s']:.1f}", f"{r['measured_over_bound']:.2f}",
                          f"{r['session_tok_s_p50']:.2f}", f"{r['session_tok_s_p10']:.2f}",
                          f"{r['forwards_per_token']:.3f}", f"{r['peak_rss_mb']:.0f}",
                          str(r["diverged"]))
    console.print(table)


@click.command("what-if", context_settings={"show_default": True})
@click.option("--target", default=None, help="Target model directory [default: --shape].")
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="tiny",
              help="Random weights of this shape when no --target is given.")
@click.option("--alphas", default="0.6,0.8", help="Per-token acceptances to make.")
@click.option("--draft-tokens", "ks", default="4,8", help="Draft lengths.")
@click.option("--sessions", default="1,16", help="Concurrent session counts.")
@click.option("--max-tokens", type=int, default=64, help="Tokens per answer.")
@click.option("--threads", type=int, default=2, help="verifyd's CPU threads.")
@click.option("--device", default="cpu", help="verifyd --device (cuda on a GPU).")
@click.option("--dtype", default="float32", help="verifyd --dtype (and the random weights').")
@click.option("--json", "as_json", is_flag=True, help="Last stdout line: one JSON object.")
def what_if(target: str | None, shape: str, alphas: str, ks: str, sessions: str,
            max_tokens: int, threads: int, device: str, dtype: str, as_json: bool) -> None:
    """Capacity against α, k and N from drafts made from the target's own answers."""
    import tempfile

    from edgespec.models.cpu import cpu_model, usable_cores
    from edgespec.models.paths import default_cache_dir

    console = Console(stderr=True, width=140)
    path = target or str(random_target(shape, dtype, default_cache_dir()))
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        results = run_what_if(path, [float(a) for a in alphas.split(",")],
                              [int(k) for k in ks.split(",")],
                              [int(n) for n in sessions.split(",")], max_tokens, threads,
                              device, dtype, Path(tmp), progress)
    what = target or f"random {shape}"
    caption = (f"{what} · {dtype} on {device} · {cpu_model()} · {usable_cores()} cores · "
               f"verifyd {threads} threads · load {os.getloadavg()[0]:.1f}")
    print_table(console, results, caption)
    if as_json:
        print(json.dumps({"target": what, "device": device, "dtype": dtype,
                          "results": results}))
