"""The interactive terminal: streamed answers under a live status line."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, fields
from typing import Any

from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.sampling_setup import Sampling
from edgespec.edge_client.stats import GenerationStats
from edgespec.edge_client.trace import TraceWriter
from edgespec.edge_client.transport import DaemonUnavailable
from edgespec.wire.errors import WireError
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

HELP = "/reset starts over, /retry continues a cut-off answer, /stats shows totals, /quit leaves"


@dataclass(slots=True)
class Unfinished:
    """An answer cut off by an unreachable daemon: ``tokens`` is the prompt plus every token
    verified so far, so ``/retry`` continues exactly where it stopped."""

    tokens: list[int]
    prompt_length: int
    remaining: int


def _status(stats: GenerationStats, note: str = "") -> Text:
    line = (f"acceptance {stats.acceptance_rate:.0%} · {stats.tokens_per_s:.1f} tok/s · "
            f"RTT {stats.round_trip_ms:.0f} ms · {stats.tokens_per_round:.1f} tok/round · "
            f"{stats.draft_shape} · "
            f"{stats.bytes_per_round:.0f} B/round · verify {stats.verify} · "
            f"threads {stats.draft_threads}+{stats.daemon_threads} ({stats.thread_split})"
            + (f" · draft {stats.idle_draft_threads} between rounds"
               if stats.idle_draft_threads > stats.draft_threads else ""))
    if stats.tokenizers != "same":
        line += f" · {stats.tokenizers}"
    return Text(f"{line}  {note}".rstrip(), style="dim")


def run_chat(client: EdgeClient, max_tokens: int, system: str | None,
             trace: TraceWriter | None = None, sampling: Sampling | None = None) -> None:
    console = Console()
    sampling = sampling or Sampling()
    split = client.threads
    console.print(f"[bold]edgespec[/] · target [cyan]{client.welcome.model_name}[/] at "
                  f"{client.config.server} · {HELP}")
    console.print(f"[dim]threads: {split.label}[/]")
    if client.translation is not None:
        console.print(f"[dim]{client.tokenizers}[/]")
    if sampling.target.temperature > 0:
        t = sampling.target
        console.print(f"[dim]sampling: temperature {t.temperature:g}, top-k {t.top_k}, "
                      f"top-p {t.top_p:g}, seed {t.seed}, verify {t.strategy}[/]")
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    session_id = new_session_id()
    totals = GenerationStats()
    unfinished: Unfinished | None = None
    while True:
        try:
            user = console.input("[bold green]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not user:
            continue
        if user == "/quit":
            break
        if user == "/reset":
            client.end_session(session_id)
            messages = messages[:1] if system else []
            session_id, unfinished = new_session_id(), None
            console.print("[dim]conversation cleared[/]")
            continue
        if user == "/stats":
            console.print_json(data=totals.as_dict())
            continue
        if user == "/retry":
            if unfinished is None:
                console.print("[dim]nothing to retry[/]")
                continue
            messages.pop()  # the cut-off answer is replaced by its continuation
        elif user.startswith("/"):
            console.print(f"[yellow]unknown command[/] {user}: {HELP}")
            continue
        else:
            messages.append({"role": "user", "content": user})
            unfinished = None
        answer, unfinished = _answer(console, client, session_id, messages, max_tokens, totals,
                                     trace, unfinished, sampling)
        messages.append({"role": "assistant", "content": answer})
    client.end_session(session_id)
    client.close()


def _answer(console: Console, client: EdgeClient, session_id: int,
            messages: list[dict[str, str]], max_tokens: int, totals: GenerationStats,
            trace: TraceWriter | None = None,
            resume: Unfinished | None = None,
            sampling: Sampling | None = None) -> tuple[str, Unfinished | None]:
    """Stream one answer; return its text and, if the daemon stayed away, what /retry needs."""
    if resume is not None:
        tokens, prompt_length, budget = resume.tokens, resume.prompt_length, resume.remaining
    else:
        tokens = client.chat_tokens(messages)
        prompt_length, budget = len(tokens), max_tokens
    stats = GenerationStats()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = Text(client.text(tokens[prompt_length:]))  # a resumed answer shows its start
    note = ""
    cut_off: Unfinished | None = None
    start = len(tokens)

    def view() -> Any:
        return Group(Text("bot> ", style="bold blue") + text, _status(stats, note))

    with Live(view(), console=console, refresh_per_second=12, transient=False) as live:
        def on_wait(message: str) -> None:
            nonlocal note
            note = message
            live.update(view())

        try:
            for new in client.generate(session_id, tokens, budget, stats, on_wait=on_wait,
                                       trace=trace, sampling=sampling):
                visible = [t for t in new if t not in client.stop_ids]
                text.append(decoder.decode(client.token_bytes(visible)))
                note = ""
                live.update(view())
        except DaemonUnavailable as exc:  # tokens holds every verified token: /retry resumes
            cut_off = Unfinished(tokens, prompt_length, budget - (len(tokens) - start))
            note = f"[{exc}]"
        except (WireError, ValueError) as exc:  # the conversation is kept: /reset or retry
            note = f"[error: {exc}]"
        except KeyboardInterrupt:
            note = "[interrupted]"
        live.update(view())
    if not console.is_terminal:  # piped: Live leaves its last line open; end it for readers
        console.print()
    _accumulate(totals, stats)
    return client.text(tokens[prompt_length:]), cut_off


def _accumulate(totals: GenerationStats, stats: GenerationStats) -> None:
    for f in fields(GenerationStats):
        value = getattr(stats, f.name)
        if f.name in GenerationStats.LABELS:  # labels: the latest one holds
            setattr(totals, f.name, value)
        else:
            setattr(totals, f.name, getattr(totals, f.name) + value)
