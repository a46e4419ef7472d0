"""Side-by-side benchmark: target alone (transformers ``generate``), the daemon with draft
length 0, and edgespec, on the same prompts in one run, with token ids checked identical.
Each speed is printed beside measured / bound (``tools/bound.py``), from parts measured in
the same run (``tools/costs.py``).
With ``--sampling`` all three sample (temperature 0.7, top-p 0.9, one seed per prompt) and
ids are not compared (the distributions are: tests/integration/test_sampling.py).

    tools/bench [--pairs default,hard,cross] [--sets chat,humaneval] [--sampling] [--json]
    tools/bench --rtt 0,20,50,100 [--json]   (edgespec through tools/relay at each RTT)
    tools/bench batching --sessions 1,4,16,64 [--json]      (see bench_batching.py)
    tools/bench budget --sessions 16,64 [--json]            (see bench_budget.py)
    tools/bench distribution [--pair default|tiny] [--draws 10000]  (bench_distribution.py)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click
from edgespec.edge_client.draft_length import expected_tokens
from edgespec.models.cpu import cpu_model, usable_cores
from edgespec.tools.bench_batching import batching
from edgespec.tools.bench_budget import budget
from edgespec.tools.bench_distribution import distribution, pair_paths
from edgespec.tools.bound import Parts, VerifyCost, best
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
    prompt_tokens: int = 0  # the prompts' tokens, all runs: the draft reads each one first

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

# The fields of one pair/set in ``--json`` (README's Benchmark section documents each).
SET_FIELDS = (
    "target_generate_tok_s", "daemon_k0_tok_s", "edgespec_tok_s", "speedup_vs_generate",
    "speedup_vs_daemon_k0", "identical_token_ids", "tokens", "acceptance_rate",
    "per_token_acceptance", "mean_draft_length", "tokens_per_round", "bytes_per_round",
    "ideal_speedup", "bound", "time_split", "ahead_tokens_used", "threads", "components")
RTT_SET_FIELDS = (
    "target_generate_tok_s", "target_daemon_cores_tok_s", "identical_token_ids", "tokens",
    "components", "rtt")
RTT_FIELDS = (
    "edgespec_tok_s", "speedup_vs_target_daemon_cores", "per_token_acceptance",
    "mean_draft_length", "tokens_per_round", "expected_tokens_per_round", "round_trip_ms",
    "chained_share", "draft_shape", "mean_tree_nodes", "mean_tree_depth", "bound")
# with --vs-chain: the same client drafting chains only, through the same relay
RTT_CHAIN_FIELDS = ("chain_tok_s", "chain_tokens_per_round", "over_chain_tok_s",
                    "over_chain_tokens_per_round")
# with --vs-unchained: the same client never sending a draft chained (--no-chain)
RTT_UNCHAINED_FIELDS = ("unchained_tok_s", "over_unchained_tok_s")
BOUND_FIELDS = ("bound_sequential_tok_s", "bound_sequential_k", "bound_pipelined_tok_s",
                "bound_pipelined_k", "bound_tok_s", "measured_over_bound")
COMPONENT_FIELDS = ("draft_ms_per_token", "draft_idle_ms_per_token",
                    "draft_prefill_ms_per_token", "verify_ms_by_width",
                    "verify_threads",
                    "generate_step_ms", "round_trip_ms", "context_tokens", "k_max")


@dataclass
class Components:
    """The parts the bound is built from, measured in this run (see tools/costs.py)."""

    draft_s_per_token: float
    verify: VerifyCost
    verify_threads: int
    generate_step_s: float  # the target alone's one-token forward at its own threads
    round_trip_s: dict[float, float]  # PING through each path, keyed by added RTT (ms)
    context_tokens: int
    k_max: int
    draft_idle_s_per_token: float = 0.0  # with the daemon's cores too (0: not measured)
    draft_prefill_s_per_token: float = 0.0  # the draft reading a prompt, at its fastest

    def fastest(self, other: Components) -> Components:
        """Each part at the faster of two measurements (same widths and paths)."""
        return replace(
            self, draft_s_per_token=min(self.draft_s_per_token, other.draft_s_per_token),
            draft_idle_s_per_token=min(self.idle_draft_s, other.idle_draft_s),
            draft_prefill_s_per_token=min(self.draft_prefill_s_per_token,
                                          other.draft_prefill_s_per_token),
            verify=VerifyCost(self.verify.widths, tuple(
                min(a, b) for a, b in zip(self.verify.seconds, other.verify.seconds,
                                          strict=True))),
            generate_step_s=min(self.generate_step_s, other.generate_step_s),
            round_trip_s={r: min(s, other.round_trip_s[r]) for r, s in self.round_trip_s.items()})

    @property
    def idle_draft_s(self) -> float:
        return self.draft_idle_s_per_token or self.draft_s_per_token

    def parts(self, rtt_ms: float) -> Parts:
        return Parts(self.draft_s_per_token, self.verify, self.round_trip_s[rtt_ms],
                     self.idle_draft_s)

    def as_dict(self) -> dict[str, Any]:
        return {"draft_ms_per_token": round(1000 * self.draft_s_per_token, 2),
                "draft_idle_ms_per_token": round(1000 * self.idle_draft_s, 2),
                "draft_prefill_ms_per_token": round(1000 * self.draft_prefill_s_per_token, 3),
                "verify_ms_by_width": {str(w): round(1000 * s, 2) for w, s in
                                       zip(self.verify.widths, self.verify.seconds,
                                           strict=True)},
                "verify_threads": self.verify_threads,
                "generate_step_ms": round(1000 * self.generate_step_s, 2),
                "round_trip_ms": {f"{r:g}": round(1000 * s, 3)
                                  for r, s in self.round_trip_s.items()},
                "context_tokens": self.context_tokens, "k_max": self.k_max}


def bound_fields(tok_s: float, tokens: int, prefill_s: float, parts: Parts, a: float,
                 k_max: int, pipelined: bool) -> dict[str, Any]:
    """The bound for this acceptance, charged the same prefill wait the run measured (the
    daemon's OPEN, plus the draft reading the prompts: no schedule that drafts skips it),
    and measured / bound."""
    b = best(parts, a, k_max)
    rate = b.pipelined_tok_s if pipelined else b.sequential_tok_s
    bound_tok_s = tokens / (prefill_s + tokens / rate) if tokens and rate else 0.0
    return {**b.as_dict(), "bound_tok_s": round(bound_tok_s, 2),
            "measured_over_bound": round(tok_s / bound_tok_s, 3) if bound_tok_s else 0.0}


def _draft_ids(client: Any, ids: list[int]) -> list[int]:
    """Target ids as the draft's own (the same ids unless the pair translates)."""
    return client.draft_ids(client.text(ids)) if client.translation is not None else ids


def daemon_verify_cost(model: Any, threads: int, context: list[int]) -> Any:
    """V(w) as verifyd runs it: with the linear-layer plan ``--gemm auto`` uses on this
    machine at these threads (``small_gemm.py``, cached by the daemon's first start), lifted
    again afterwards so the target alone stays plain ``generate``."""
    import torch
    from edgespec.models.cpu import cpu_model
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.costs import verify_cost
    from edgespec.verify_daemon import small_gemm

    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the plan's key: the daemon's threads
    try:
        small_gemm.tune(model, default_cache_dir(), cpu_model())
    finally:
        torch.set_num_threads(before)
    try:
        return verify_cost(model, threads, context)
    finally:
        small_gemm.uninstall(small_gemm.linears(model))


def measure_components(client: Any, alone: Any, threads: int, verify_threads: int,
                       context: list[int], links: dict[float, Any]) -> Components:
    from edgespec.tools.costs import (
        draft_prefill_s_per_token,
        draft_s_per_token,
        ping_s,
        verify_cost,
    )

    step = verify_cost(alone.model, threads, context, widths=(1,))
    drafter, ids = client.drafter, _draft_ids(client, context)[:64]
    drafter.daemon_idle(False)
    beside_verify = draft_s_per_token(drafter, ids)
    idle = 0.0
    drafter.daemon_idle(True)  # the prompt at its fastest: on every core the client may take
    prefill = draft_prefill_s_per_token(drafter, ids)
    if drafter.idle_threads != drafter.n_threads:  # the client takes the daemon's cores too
        idle = draft_s_per_token(drafter, ids)
    drafter.daemon_idle(False)
    return Components(
        draft_s_per_token=beside_verify,
        verify=daemon_verify_cost(alone.model, verify_threads, context),
        verify_threads=verify_threads, generate_step_s=step(1),
        round_trip_s={rtt: ping_s(link) for rtt, link in links.items()},
        context_tokens=len(context), k_max=client.policy.k_max, draft_idle_s_per_token=idle,
        draft_prefill_s_per_token=prefill)


def run_pair(pair: str, sets: list[str], n: int, max_new: int, k: int, threads: int,
             split_threads: int, pipeline: bool, progress: Progress,
             workdir: Path, sampling: bool = False,
             draft_temperature: float | None = None,
             rtts: list[float] | None = None, draft_shape: str = "chain",
             vs_chain: bool = False, vs_unchained: bool = False) -> dict[str, Any]:
    """One pair on every set. ``rtts``: instead of the daemon at k = 0, edgespec through a
    delay relay at each round trip, against the target alone on the daemon's cores (and
    with ``vs_chain``/``vs_unchained`` the same client drafting chains only, or never
    sending a draft chained, side by side; the edgespec runs take turns in order, since
    the second to open a prompt finds its prefix in verifyd's cache)."""
    from edgespec.edge_client.client import EdgeClient, new_session_id
    from edgespec.edge_client.config import ClientConfig
    from edgespec.edge_client.sampling_setup import SamplingOptions
    from edgespec.edge_client.stats import GenerationStats
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.relay import Relay
    from edgespec.tools.target_alone import TargetAlone

    draft, target = pair_paths(pair, default_cache_dir())
    daemon = start_daemon(target, workdir / f"verifyd-{pair}.log", threads=split_threads)
    alone = TargetAlone(target, threads)
    relays = {rtt: Relay.symmetric(daemon.endpoint, rtt) for rtt in rtts or ()}

    def new_client(endpoint: str, shape: str = draft_shape, chain: bool = True
                   ) -> EdgeClient:
        return EdgeClient(ClientConfig(server=endpoint, draft_path=str(draft),
                                       threads=split_threads, draft_tokens=k,
                                       pipeline=pipeline, draft_shape=shape, chain=chain))

    client = new_client(daemon.endpoint)
    clients = ({rtt: new_client(r.endpoint) for rtt, r in relays.items()} if rtts
               else {0.0: client})
    others = {"chain": {rtt: new_client(r.endpoint, "chain") for rtt, r in relays.items()}
              if rtts and vs_chain else {},
              "unchained": {rtt: new_client(r.endpoint, chain=False)
                            for rtt, r in relays.items()} if rtts and vs_unchained else {}}
    alike = [name for name, by_rtt in others.items() if by_rtt]
    daemon_threads = split_threads or client.threads.daemon
    if rtts:
        methods = ["target_generate", "target_daemon_cores",
                   *(f"{name}@{rtt:g}" for rtt in rtts for name in ("edgespec", *alike))]
    else:
        methods = list(METHODS)
    results: dict[str, Any] = {}
    try:

        def edgespec_run(via: EdgeClient, prompt: list[int], k_max: int,
                         stats: GenerationStats, seed: int = 0) -> list[int]:
            tokens = list(prompt)
            sid = new_session_id()
            options = (SamplingOptions(**SAMPLING, seed=seed,
                                       draft_temperature=draft_temperature) if sampling
                       else SamplingOptions())
            for _ in via.generate(sid, tokens, max_new, stats, policy=via.new_policy(k_max),
                                  sampling=options.resolve()):
                pass
            via.end_session(sid)
            return tokens[len(prompt):]

        def alone_run(ids: list[int], n_threads: int, seed: int) -> list[int]:
            alone.torch.set_num_threads(n_threads)
            return (alone.sample(ids, max_new, **SAMPLING, seed=seed, stop_ids=client.stop_ids)
                    if sampling else alone.greedy(ids, max_new, client.stop_ids))

        warm = client.prompt_tokens("Hello")
        alone.greedy(warm, 4, client.stop_ids)
        for via in [*clients.values(), *(c for by in others.values() for c in by.values())]:
            edgespec_run(via, warm, k, GenerationStats())
        first_text, first_raw = load_prompts(sets[0], 1)[0]
        first = (client.prompt_tokens(first_text) if first_raw
                 else client.chat_tokens([{"role": "user", "content": first_text}]))
        context = (first * (1 + max_new // max(1, len(first))))[:len(first) + max_new // 2]
        components = measure_components(client, alone, threads, daemon_threads, context,
                                        {rtt: via.link for rtt, via in clients.items()})
        measured: dict[str, tuple[dict[str, Tally], dict[str, GenerationStats]]] = {}
        for set_name in sets:
            prompts = load_prompts(set_name, n)
            tallies = {m: Tally() for m in methods}
            stats_of = {m: GenerationStats() for m in methods}
            measured[set_name] = tallies, stats_of
            task = progress.add_task(f"{pair}/{set_name}", total=len(prompts))
            for seed, (text, raw) in enumerate(prompts, 1):
                ids = (client.prompt_tokens(text) if raw
                       else client.chat_tokens([{"role": "user", "content": text}]))
                turns = [m for m in methods if not m.startswith("target_")]
                for method in [*methods[:len(methods) - len(turns)],
                               *(turns if seed % 2 else turns[::-1])]:
                    t0 = time.perf_counter()
                    if method.startswith("target_"):
                        out = alone_run(ids, threads if method == "target_generate"
                                        else daemon_threads, seed)
                    elif "@" in method:
                        name, _, at = method.partition("@")
                        via = others.get(name, clients)[float(at)]
                        out = edgespec_run(via, ids, k, stats_of[method], seed)
                    else:
                        out = edgespec_run(client, ids, 0 if method == "daemon_k0" else k,
                                           stats_of[method], seed)
                    tallies[method].seconds += time.perf_counter() - t0
                    tallies[method].tokens += len(out)
                    tallies[method].prompt_tokens += len(ids)
                    tallies[method].outputs.append(out)
                progress.advance(task)
        # Parts again after the runs: load on a shared box comes and goes, and each part
        # keeps its fastest measurement, so the bound is not set by a spike at the start.
        components = components.fastest(measure_components(
            client, alone, threads, daemon_threads, context,
            {rtt: via.link for rtt, via in clients.items()}))
        for set_name, (tallies, stats_of) in measured.items():
            results[set_name] = (
                summarize_rtt(tallies, stats_of, components, pipeline, not sampling) if rtts
                else summarize(tallies, stats_of, components, pipeline, not sampling))
    finally:
        every = [client, *clients.values(), *(c for by in others.values() for c in by.values())]
        for via in {id(c): c for c in every}.values():
            via.close()
        for relay in relays.values():
            relay.close()
        daemon.stop()
    return results


def summarize(tallies: dict[str, Tally], stats_of: dict[str, Any], components: Components,
              pipeline: bool, compare_ids: bool = True) -> dict[str, Any]:
    base = tallies["target_generate"]
    identical = all(t.outputs == base.outputs for t in tallies.values()) if compare_ids \
        else None  # sampling: same distribution, not the same ids
    stats, k0 = stats_of["edgespec"], stats_of["daemon_k0"]
    alpha = stats.per_token_acceptance
    mean_k = stats.drafted / stats.rounds if stats.rounds else 0.0
    wall = stats.wall_s or 1.0
    spec, zero = tallies["edgespec"], tallies["daemon_k0"]
    parts = components.parts(0.0)
    return {
        **{f"{m}_tok_s": round(t.tok_s, 2) for m, t in tallies.items()},
        "speedup_vs_generate": round(spec.tok_s / base.tok_s, 3),
        "speedup_vs_daemon_k0": round(spec.tok_s / zero.tok_s, 3),
        "identical_token_ids": identical,
        "tokens": base.tokens,
        "acceptance_rate": round(stats.acceptance_rate, 4),
        "per_token_acceptance": round(alpha, 4),
        "mean_draft_length": round(mean_k, 2),
        "tokens_per_round": round(stats.tokens_per_round, 3),
        "bytes_per_round": round(stats.bytes_per_round, 1),
        "ideal_speedup": round(expected_tokens(alpha, round(mean_k)), 3),
        "bound": {
            "edgespec": bound_fields(spec.tok_s, spec.tokens, stats.open_s + spec.prompt_tokens
                                     * components.draft_prefill_s_per_token, parts, alpha,
                                     components.k_max, pipeline),
            "daemon_k0": bound_fields(zero.tok_s, zero.tokens, k0.open_s, parts, 0.0, 0,
                                      False),
            "target_generate": {"bound_tok_s": round(1 / components.generate_step_s, 2),
                                "measured_over_bound":
                                    round(base.tok_s * components.generate_step_s, 3)},
        },
        # Shares of the client's wall time. Drafting and verification overlap when
        # pipelined, so "verify_on_daemon" and "wire_and_daemon_overhead" (round trip minus
        # verification) are measured on the daemon's clock and do not add up with the rest.
        "time_split": {
            "client_drafting": round(stats.draft_s / wall, 3),
            "client_translating": round(stats.translate_s / wall, 3),  # cross pair only
            "client_waiting": round(stats.wait_s / wall, 3),
            "client_other": round((wall - stats.draft_s - stats.translate_s - stats.wait_s
                                   - stats.open_s) / wall, 3),
            "open_prefill": round(stats.open_s / wall, 3),
            "verify_on_daemon": round(stats.verify_s / wall, 3),
            "wire_and_daemon_overhead": round((stats.round_trip_s - stats.verify_s) / wall, 3),
        },
        "ahead_tokens_used": f"{stats.ahead_used}/{stats.ahead_drafted}",
        "threads": {"draft": stats.draft_threads, "daemon": stats.daemon_threads,
                    "split": stats.thread_split},
        "components": components.as_dict(),
    }


def summarize_rtt(tallies: dict[str, Tally], stats_of: dict[str, Any],
                  components: Components, pipeline: bool, compare_ids: bool = True
                  ) -> dict[str, Any]:
    """Round-trip mode: edgespec at each RTT against the target alone on the daemon's cores
    (in server-only serving a round trip costs the user only the first token)."""
    base, local = tallies["target_generate"], tallies["target_daemon_cores"]
    identical = all(t.outputs == base.outputs for t in tallies.values()) if compare_ids \
        else None
    per_rtt = {}
    for method, tally in tallies.items():
        if not method.startswith("edgespec@"):
            continue
        rtt = float(method.partition("@")[2])
        stats = stats_of[method]
        alpha = stats.per_token_acceptance
        row = per_rtt[f"{rtt:g}"] = {
            "edgespec_tok_s": round(tally.tok_s, 2),
            "speedup_vs_target_daemon_cores": round(tally.tok_s / local.tok_s, 3),
            "per_token_acceptance": round(alpha, 4),
            "mean_draft_length": round(stats.drafted / stats.rounds, 2) if stats.rounds else 0,
            "tokens_per_round": round(stats.tokens_per_round, 3),
            # what the client's draft-length policy expected of its rounds (its model's error)
            "expected_tokens_per_round": round(stats.expected_tokens_per_round, 3),
            "round_trip_ms": round(stats.round_trip_ms, 1),
            "chained_share": round(stats.chained_rounds / stats.rounds, 3) if stats.rounds
            else 0.0,
            "draft_shape": stats.draft_shape,
            "mean_tree_nodes": round(stats.tree_nodes / stats.tree_rounds, 2)
            if stats.tree_rounds else 0.0,
            "mean_tree_depth": round(stats.tree_depth / stats.tree_rounds, 2)
            if stats.tree_rounds else 0.0,
            "bound": bound_fields(tally.tok_s, tally.tokens, stats.open_s + tally.prompt_tokens
                                  * components.draft_prefill_s_per_token,
                                  components.parts(rtt), alpha, components.k_max, pipeline),
        }
        chain = tallies.get(f"chain@{rtt:g}")
        if chain is not None:
            chain_stats = stats_of[f"chain@{rtt:g}"]
            row.update({
                "chain_tok_s": round(chain.tok_s, 2),
                "chain_tokens_per_round": round(chain_stats.tokens_per_round, 3),
                "over_chain_tok_s": round(tally.tok_s / chain.tok_s, 3) if chain.tok_s else 0,
                "over_chain_tokens_per_round": round(
                    stats.tokens_per_round / chain_stats.tokens_per_round, 3)
                if chain_stats.tokens_per_round else 0})
        unchained = tallies.get(f"unchained@{rtt:g}")
        if unchained is not None:
            row.update({
                "unchained_tok_s": round(unchained.tok_s, 2),
                "over_unchained_tok_s": round(tally.tok_s / unchained.tok_s, 3)
                if unchained.tok_s else 0})
    return {"target_generate_tok_s": round(base.tok_s, 2),
            "target_daemon_cores_tok_s": round(local.tok_s, 2),
            "identical_token_ids": identical, "tokens": base.tokens,
            "components": components.as_dict(), "rtt": per_rtt}


def components_line(results: dict[str, Any]) -> str:
    """The measured parts under a table: what the bound was built from."""
    lines = []
    for pair, sets in results.items():
        c = next(iter(sets.values()))["components"]
        v = c["verify_ms_by_width"]
        idle = c.get("draft_idle_ms_per_token", c["draft_ms_per_token"])
        draft = (f"{c['draft_ms_per_token']} ms/token ({idle} between rounds)"
                 if idle != c["draft_ms_per_token"] else f"{c['draft_ms_per_token']} ms/token")
        lines.append(f"{pair}: draft {draft}, verify "
                     + ", ".join(f"w{w} {ms}" for w, ms in v.items())
                     + f" ms ({c['verify_threads']} threads, {c['context_tokens']}-token "
                     f"cache), PING {c['round_trip_ms']} ms")
    return "\n".join(lines)


def print_table(console: Console, results: dict[str, Any], caption: str = "") -> None:
    table = Table(title="edgespec vs target alone (tokens/s; /bound: measured / bound)",
                  caption=caption)
    for col in ("pair", "set", "generate", "/bound", "daemon k=0", "/bound", "edgespec",
                "bound", "/bound", "× generate", "× k=0", "α", "tok/round", "identical"):
        table.add_column(col, justify="right")
    for pair, sets in results.items():
        for name, r in sets.items():
            b = r["bound"]
            table.add_row(pair, name, f"{r['target_generate_tok_s']:.1f}",
                          f"{b['target_generate']['measured_over_bound']:.2f}",
                          f"{r['daemon_k0_tok_s']:.1f}",
                          f"{b['daemon_k0']['measured_over_bound']:.2f}",
                          f"{r['edgespec_tok_s']:.1f}", f"{b['edgespec']['bound_tok_s']:.1f}",
                          f"{b['edgespec']['measured_over_bound']:.2f}",
                          f"{r['speedup_vs_generate']:.2f}", f"{r['speedup_vs_daemon_k0']:.2f}",
                          f"{r['per_token_acceptance']:.2f}", f"{r['tokens_per_round']:.2f}",
                          {True: "yes", False: "NO", None: "n/a"}[r["identical_token_ids"]])
    console.print(table)
    console.print(components_line(results))


def print_rtt_table(console: Console, results: dict[str, Any], caption: str = "") -> None:
    table = Table(title="edgespec under a round trip vs the target alone on the daemon's "
                  "cores (tokens/s)", caption=caption)
    for col in ("pair", "set", "RTT ms", "alone", "edgespec", "× alone", "α", "tok/round",
                "chained", "trees (nodes, depth)", "chain", "tok/round", "× chain",
                "unchained", "× unch.", "bound", "/bound", "identical"):
        table.add_column(col, justify="right")
    for pair, sets in results.items():
        for name, r in sets.items():
            for rtt, x in r["rtt"].items():
                chain = ((f"{x['chain_tok_s']:.1f}", f"{x['chain_tokens_per_round']:.2f}",
                          f"{x['over_chain_tok_s']:.2f}") if "chain_tok_s" in x
                         else ("", "", ""))
                unchained = ((f"{x['unchained_tok_s']:.1f}", f"{x['over_unchained_tok_s']:.2f}")
                             if "unchained_tok_s" in x else ("", ""))
                table.add_row(pair, name, rtt, f"{r['target_daemon_cores_tok_s']:.1f}",
                              f"{x['edgespec_tok_s']:.1f}",
                              f"{x['speedup_vs_target_daemon_cores']:.2f}",
                              f"{x['per_token_acceptance']:.2f}",
                              f"{x['tokens_per_round']:.2f}", f"{x['chained_share']:.0%}",
                              x["draft_shape"], *chain, *unchained,
                              f"{x['bound']['bound_tok_s']:.1f}",
                              f"{x['bound']['measured_over_bound']:.2f}",
                              {True: "yes", False: "NO", None: "n/a"}[r["identical_token_ids"]])
    console.print(table)
    console.print(components_line(results))


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
    ax.scatter(range(len(labels)), [r["bound"]["edgespec"]["bound_tok_s"] for r in rows],
               marker="_", s=900, color="black", label="edgespec bound", zorder=3)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("tokens/s (greedy)")
    ax.set_title("edgespec vs target alone, same machine, one run")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_rtt(results: dict[str, Any], path: Path) -> None:
    """tok/s against round trip, one panel per pair: each set, its bound, the target alone
    (and the chains-only or --no-chain runs when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (pair, sets) in zip(axes[0], results.items(), strict=True):
        for i, (name, r) in enumerate(sets.items()):
            rtts = [float(x) for x in r["rtt"]]
            color = f"C{i}"
            ax.plot(rtts, [x["edgespec_tok_s"] for x in r["rtt"].values()], "o-",
                    color=color, label=f"edgespec {name}")
            ax.plot(rtts, [x["bound"]["bound_tok_s"] for x in r["rtt"].values()], ":",
                    color=color, label=f"bound {name}")
            if all("chain_tok_s" in x for x in r["rtt"].values()):
                ax.plot(rtts, [x["chain_tok_s"] for x in r["rtt"].values()], "x-.",
                        color=color, lw=0.8, label=f"chains only {name}")
            if all("unchained_tok_s" in x for x in r["rtt"].values()):
                ax.plot(rtts, [x["unchained_tok_s"] for x in r["rtt"].values()], "+-.",
                        color=color, lw=0.8, label=f"--no-chain {name}")
            ax.axhline(r["target_daemon_cores_tok_s"], color=color, ls="--", lw=0.8,
                       label=f"target alone {name}")
        ax.set_xlabel("round trip (ms)")
        ax.set_ylabel("tokens/s (greedy)")
        ax.set_title(f"{pair} pair")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


@click.group(invoke_without_command=True, context_settings={"show_default": True})
@click.option("--pairs", default="default,hard",
              help="Draft/target pairs: default, hard, cross (SmolLM2 draft before Gemma 3 "
                   "270M: another tokenizer) (tiny: random weights, for plumbing).")
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
@click.option("--rtt", "rtt_", default=None,
              help="Round trips in ms (e.g. 0,20,50,100): edgespec through a delay relay at "
                   "each, against the target alone on the daemon's cores.")
@click.option("--draft-shape", type=click.Choice(["chain", "tree", "auto"]), default="chain",
              help="edgespec's draft shape (the client's --draft-shape).")
@click.option("--vs-chain", is_flag=True,
              help="With --rtt: also run the same client drafting chains only, side by side.")
@click.option("--vs-unchained", is_flag=True,
              help="With --rtt: also run the same client with --no-chain (no draft sent "
                   "before the verdict before it), side by side.")
@click.option("--draft-temperature", type=float, default=None,
              help="With --sampling: the draft's temperature [default: 0.7, a sparse q]; "
                   "0 = argmax draft, one-hot q (ids only on the wire).")
@click.pass_context
def main(ctx: click.Context, pairs: str, sets_: str, n: int, max_tokens: int,
         draft_tokens: int, threads: int, split_threads: int, pipeline: bool, as_json: bool,
         plot_path: str, sampling: bool, rtt_: str | None, draft_shape: str, vs_chain: bool,
         vs_unchained: bool, draft_temperature: float | None) -> None:
    """Measure edgespec against the target alone, side by side (``batching``: many users)."""
    if ctx.invoked_subcommand is not None:
        return
    console = Console(stderr=True, width=160)
    rtts = [float(x) for x in rtt_.split(",")] if rtt_ else None
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        for pair in pairs.split(","):
            results[pair] = run_pair(pair, sets_.split(","), n, max_tokens, draft_tokens,
                                     threads, split_threads, pipeline, progress, Path(tmp),
                                     sampling, draft_temperature, rtts, draft_shape,
                                     vs_chain, vs_unchained)
    split = (f"draft {split_threads} + verifyd {split_threads} threads" if split_threads
             else "no thread flags (each side's default split)")
    caption = (f"{cpu_model()} · {usable_cores()} cores · generate {threads} threads · {split}"
               f" · load {os.getloadavg()[0]:.1f}")
    if rtts:
        plot_path = str(Path(plot_path).with_name("bench-rtt.png"))
        print_rtt_table(console, results, caption)
        plot_rtt(results, Path(plot_path))
    else:
        print_table(console, results, caption)
        plot(results, Path(plot_path))
    console.print(f"plot: {plot_path}")
    if as_json:
        print(json.dumps(results))
    if any(r["identical_token_ids"] is False for s in results.values() for r in s.values()):
        sys.exit("token ids differ from the target alone")


main.add_command(batching)
main.add_command(budget)
main.add_command(distribution)

if __name__ == "__main__":
    main()
