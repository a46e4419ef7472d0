"""Replay recorded client traces against a running verifyd, or summarise them.

A trace (``edgespec generate --trace FILE``) holds each session's OPEN and its DRAFT/VERDICT
rounds. Replaying needs no draft model, so one machine can drive a daemon with many
concurrent sessions of realistic load. Verification is deterministic (greedy, or sampling
with the recorded seed and q: the daemon's draws are keyed by seed and position), so each
verdict must match the recording; a mismatch ("diverged") means the daemon changed its
answer, and the rest of that session no longer applies. A target-only replay of a sampled
session draws its own tokens, so its verdicts are not checked.

    tools/replay run TRACE... --server tcp://HOST:5557 [--sessions 8] [--concurrency N]
                 [--pace recorded|fast] [--target-only | --honour-budget] [--json]
    tools/replay summary TRACE... [--json]
    tools/replay what-if [--shape tiny|llama-3-8b | --target DIR] [--alphas 0.6,0.8]
                 [--draft-tokens 4,8] [--sessions 1,16,64]      (tools/what_if.py)

A busy daemon's retry-after is honoured on OPEN, and a session the daemon evicted is re-opened
with its full history, as the real client does; both are counted, neither is an error.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click
import numpy as np
from edgespec.edge_client.trace import (
    TraceError,
    accepted_tokens,
    read_trace,
    sampling_of,
    sparse_q_of,
)
from edgespec.edge_client.transport import Link, expect, new_session_id
from edgespec.wire.codec import Close, Draft, Open, Opened, SamplingParams, Verdict
from edgespec.wire.curve import BadKey, CurveClient
from edgespec.wire.errors import Overloaded, UnknownSession, WireError
from rich.console import Console
from rich.table import Table

Record = dict[str, Any]


@dataclass
class Tally:
    """What one or more replayed (or recorded) sessions did; tallies add up."""

    sessions: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    diverged_rounds: int = 0
    diverged_sessions: int = 0
    busy_retries: int = 0
    reopens: int = 0
    session_tok_s: list[float] = field(default_factory=list)  # each session's own rate

    def add_round(self, drafted: int, accepted: int, latency_ms: float) -> None:
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.latencies_ms.append(latency_ms)

    def merge(self, other: Tally) -> None:
        self.sessions += other.sessions
        self.rounds += other.rounds
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.latencies_ms += other.latencies_ms
        self.errors.update(other.errors)
        self.diverged_rounds += other.diverged_rounds
        self.diverged_sessions += other.diverged_sessions
        self.busy_retries += other.busy_retries
        self.reopens += other.reopens
        self.session_tok_s += other.session_tok_s


def load_sessions(paths: tuple[str, ...]) -> list[list[Record]]:
    """Each recorded session's records in order; files are kept apart (ids may repeat)."""
    sessions: dict[tuple[str, str], list[Record]] = {}
    for path in paths:
        try:
            records = read_trace(path)
        except TraceError as exc:
            raise click.ClickException(str(exc)) from exc
        for record in records:
            if record.get("kind") in ("open", "round"):
                sessions.setdefault((path, record["session"]), []).append(record)
    return [records for records in sessions.values() if records[0]["kind"] == "open"]


def as_target_only(records: list[Record]) -> list[Record]:
    """The same session decoded by the target alone: every verified token becomes its own
    round with an empty draft (draft length 0), at the recorded round's time. A sampled
    session's rounds are marked ``unchecked``: the target alone draws other tokens."""
    sampled = any(r["kind"] == "open" and r.get("sampling") for r in records)
    out: list[Record] = []
    for record in records:
        if record["kind"] != "round":
            out.append(record)
            continue
        produced = [*accepted_tokens(record), record["next_token"]]
        kept = {key: value for key, value in record.items()
                if key not in ("q", "parents", "path")}
        out += [kept | {"base_length": record["base_length"] + i, "draft": [], "accepted": 0,
                        "next_token": token, "unchecked": sampled}
                for i, token in enumerate(produced)]
    return out


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: no interpolation, so it is always a latency we saw."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def summarize(tally: Tally, wall_s: float) -> dict[str, Any]:
    """The one JSON object both subcommands print."""
    verified = tally.accepted + tally.rounds  # each round yields accepted + 1 tokens
    return {
        "sessions": tally.sessions,
        "rounds": tally.rounds,
        "verified_tokens": verified,
        "wall_s": round(wall_s, 4),
        "tokens_per_s": round(verified / wall_s, 2) if wall_s > 0 else 0.0,
        "latency_ms": {f"p{p}": round(percentile(tally.latencies_ms, p), 3)
                       for p in (50, 90, 99)},
        "acceptance": round(tally.accepted / tally.drafted, 4) if tally.drafted else 0.0,
        "mean_draft_length": round(tally.drafted / tally.rounds, 3) if tally.rounds else 0.0,
        "errors": dict(tally.errors),
        "diverged_rounds": tally.diverged_rounds,
        "diverged_sessions": tally.diverged_sessions,
        "busy_retries": tally.busy_retries,
        "reopens": tally.reopens,
    }


def print_table(title: str, summary: dict[str, Any]) -> None:
    """For people, on stderr, so stdout stays one JSON line with --json."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        table.add_row(key, str(value))
    Console(stderr=True, width=120).print(table)


def emit(title: str, summary: dict[str, Any], as_json: bool) -> None:
    print_table(title, summary)
    if as_json:
        click.echo(json.dumps(summary))


# ---------------------------------------------------------------- replaying one session


class Replayer:
    """Replays one recorded session on its own ``Link`` (a zmq socket stays in its thread)."""

    def __init__(self, endpoint: str, records: list[Record], pace: str, timeout_s: float,
                 curve: CurveClient | None = None):
        self.records = records
        self.curve = curve
        self.pace = pace
        self.timeout_s = timeout_s
        self.endpoint = endpoint
        self.session_id = new_session_id()  # fresh, so copies never collide
        self.tally = Tally(sessions=1)
        self.history: list[int] = []
        self.max_new = 0
        self.sampling = SamplingParams()

    def run(self) -> Tally:
        link = Link(self.endpoint, timeout_s=self.timeout_s, curve=self.curve)
        start = time.monotonic()
        try:
            self.play(link, start)
            self.close(link)
        finally:
            link.close()
        elapsed = time.monotonic() - start
        verified = self.tally.accepted + self.tally.rounds
        self.tally.session_tok_s.append(verified / elapsed if elapsed > 0 else 0.0)
        return self.tally

    def play(self, link: Link, start: float) -> None:
        """Send the recorded events in order (at their recorded spacing with that pace)."""
        t0 = self.records[0]["t"]
        for record in self.records:
            if self.pace == "recorded":
                time.sleep(max(0.0, (record["t"] - t0) - (time.monotonic() - start)))
            if not self.step(link, record):
                break

    def step(self, link: Link, record: Record) -> bool:
        """Send one recorded event; False when the session cannot go on."""
        try:
            if record["kind"] == "open":
                return self.open(link, record)
            return self.round(link, record)
        except (WireError, TraceError) as exc:
            self.tally.errors[type(exc).__name__] += 1
            return False

    def open(self, link: Link, record: Record) -> bool:
        self.history = list(record["tokens"])
        self.max_new = record["max_new_tokens"]
        self.sampling = sampling_of(record)
        return self._open(link)

    def _open(self, link: Link) -> bool:
        """OPEN (or re-open) at ``history``; wait as long as a busy daemon asks."""
        while True:
            try:
                expect(link.request(Open(self.history, self.max_new, self.sampling),
                                    self.session_id), Opened)
                return True
            except Overloaded as exc:
                self.tally.busy_retries += 1
                time.sleep(max(exc.retry_after_ms, 50) / 1000.0)

    def round(self, link: Link, record: Record) -> bool:
        parents = record.get("parents")
        draft = Draft(record["base_length"], record["draft"], sparse_q_of(record),
                      None if parents is None else np.asarray(parents, dtype=np.int32))
        verdict = self.verify(link, draft)
        checked = not record.get("unchecked", False)
        if checked and ((verdict.accepted, verdict.next_token, list(verdict.path))
                        != (record["accepted"], record["next_token"], record.get("path", []))):
            self.tally.diverged_rounds += 1
            self.tally.diverged_sessions += 1
            return False
        self.history += [*accepted_tokens(record), verdict.next_token]  # == the verdict's
        return True

    def verify(self, link: Link, draft: Draft) -> Verdict:
        """One round, tallied; an evicted session is re-opened with its full history and
        the round retried."""
        sent_at = time.perf_counter()
        try:
            reply = link.request(draft, self.session_id)
        except UnknownSession:
            self.tally.reopens += 1
            self._open(link)
            sent_at = time.perf_counter()
            reply = link.request(draft, self.session_id)
        verdict = expect(reply, Verdict)
        self.tally.add_round(len(draft.tokens), verdict.accepted,
                             (time.perf_counter() - sent_at) * 1000.0)
        return verdict

    def close(self, link: Link) -> None:
        try:
            link.request(Close(), self.session_id)  # a loaded daemon answers after its step
        except WireError as exc:
            self.tally.errors[type(exc).__name__] += 1


def replay(endpoint: str, recorded: list[list[Record]], n: int, pace: str,
           timeout_s: float, concurrency: int | None = None,
           curve: CurveClient | None = None,
           replayer: type[Replayer] = Replayer) -> tuple[Tally, float]:
    """N sessions cycling through the recorded ones, ``concurrency`` at a time (default: all
    at once; 1: one after another); return the tally and the wall time. ``replayer``:
    ``budget_replay.BudgetReplayer`` cuts each draft to the daemon's budget."""
    replayers = [replayer(endpoint, recorded[i % len(recorded)], pace, timeout_s, curve)
                 for i in range(n)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency or n) as pool:
        results = list(pool.map(lambda r: r.run(), replayers))
    wall = time.perf_counter() - start
    total = Tally()
    for tally in results:
        total.merge(tally)
    return total, wall


def recorded_tally(recorded: list[list[Record]]) -> tuple[Tally, float]:
    """The same numbers for the recording itself; wall spans first send to last verdict."""
    total = Tally(sessions=len(recorded))
    first, last = math.inf, -math.inf
    for records in recorded:
        for record in records:
            end = record["t"] + record.get("rtt_ms", 0.0) / 1000.0
            first, last = min(first, record["t"]), max(last, end)
            if record["kind"] == "round":
                total.add_round(len(record["draft"]), record["accepted"], record["rtt_ms"])
    return total, (last - first) if recorded else 0.0


# ---------------------------------------------------------------- CLI


@click.group()
def main() -> None:
    """Replay recorded edgespec traces against a verifyd, or summarise them."""


@main.command()
@click.argument("traces", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--server", required=True, help="verifyd endpoint, e.g. tcp://127.0.0.1:5557.")
@click.option("--sessions", "n", type=click.IntRange(1, 4096), default=None,
              help="Concurrent sessions [default: one per recorded session].")
@click.option("--pace", type=click.Choice(["recorded", "fast"]), default="recorded",
              show_default=True,
              help="recorded: keep the recorded spacing of sends; fast: send on each verdict.")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=None,
              help="Sessions in flight at once [default: all; 1 = one after another].")
@click.option("--target-only", is_flag=True,
              help="Replay the recorded answers with draft length 0 (one token per round).")
@click.option("--honour-budget", is_flag=True,
              help="Cut each draft to the budget of the daemon's last VERDICT, as a live "
                   "client does (greedy traces; tools/budget_replay.py).")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait for each reply.")
@click.option("--server-key", default=None,
              help="The daemon's CURVE public key (.key file or Z85) for a CURVE daemon.")
@click.option("--client-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Our .key_secret, when the daemon has an --allow list.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object as the last stdout line.")
def run(traces: tuple[str, ...], server: str, n: int | None, concurrency: int | None,
        pace: str, target_only: bool, honour_budget: bool, timeout: float,
        server_key: str | None, client_key: str | None, as_json: bool) -> None:
    """Drive a running daemon with the recorded sessions and check its verdicts."""
    recorded = load_sessions(traces)
    if not recorded:
        raise click.ClickException("no recorded sessions in the traces")
    if target_only:
        recorded = [as_target_only(records) for records in recorded]
    try:
        curve = CurveClient.from_options(server_key, client_key)
    except BadKey as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # a client key without a server key
        raise click.UsageError(str(exc)) from exc
    from edgespec.tools.budget_replay import BudgetReplayer

    tally, wall = replay(server, recorded, n or len(recorded), pace, timeout, concurrency,
                         curve, BudgetReplayer if honour_budget else Replayer)
    emit(f"replay against {server} ({pace})", summarize(tally, wall), as_json)


@main.command()
@click.argument("traces", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object as the last stdout line.")
def summary(traces: tuple[str, ...], as_json: bool) -> None:
    """Summarise recorded traces; no daemon needed."""
    tally, wall = recorded_tally(load_sessions(traces))
    emit("recorded traces", summarize(tally, wall), as_json)


def _add_what_if() -> None:
    from edgespec.tools.what_if import what_if

    main.add_command(what_if)


_add_what_if()

if __name__ == "__main__":
    main()
