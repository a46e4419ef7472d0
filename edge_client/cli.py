"""``edgespec chat`` and ``edgespec generate``: the user's side of split speculative decoding."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.doctor import doctor_options, run_doctor
from edgespec.edge_client.env_options import read_from_environment
from edgespec.edge_client.sampling_setup import SamplingOptions, click_options

DEFAULT_SERVER = "tcp://127.0.0.1:5557"


def _common(fn: Any) -> Any:
    options = [
        click.option("--server", default=DEFAULT_SERVER, show_default=True,
                     help="verifyd endpoint."),
        click.option("--draft", "draft", default="default", show_default=True,
                     help="Draft GGUF path, a Hugging Face hub id ORG/REPO:FILE.gguf "
                          "(downloaded once into the hub cache), 'default' (bundled "
                          "SmolLM2-135M Q4_1) or 'hard' (the same requantized to Q2_K)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="llama.cpp threads for the draft [default: with verifyd on this "
                          "machine, the cores it leaves; with a remote one, every core up "
                          "to 8]."),
        click.option("--draft-tokens", "-k", type=click.IntRange(0, 64), default=16,
                     show_default=True, help="Most tokens drafted per round (0 = target only)."),
        click.option("--fixed-k", is_flag=True,
                     help="Always draft --draft-tokens instead of adapting k per round."),
        click.option("--pipeline/--no-pipeline", default=True, show_default=True,
                     help="Keep drafting while a verdict is in flight (hides the round trip; "
                          "on one shared machine give draft and daemon a core each)."),
        click.option("--chain/--no-chain", default=True, show_default=True,
                     help="With --pipeline, send the next draft before the verdict, chained "
                          "on the guess that this one holds: when it does, a round trip is "
                          "saved (never with --seed: it depends on timing)."),
        click.option("--draft-shape", type=click.Choice(["chain", "tree", "auto"]),
                     default="chain", show_default=True,
                     help="Chains, token trees (siblings where the draft is unsure; more "
                          "tokens a round, more drafting), or auto: per round whichever "
                          "measured more tokens/s this session."),
        click.option("--timeout", type=float, default=120.0, show_default=True,
                     help="Seconds to wait for the daemon before giving up."),
        click.option("--cache-dir", type=click.Path(), default=None,
                     help="Model cache [default: ~/.cache/edgespec]."),
        click.option("--trace", "trace_path", type=click.Path(dir_okay=False), default=None,
                     help="Record each session and round as JSON lines (for tools/replay)."),
        click.option("--server-key", default=None,
                     help="The daemon's CurveZMQ public key: its server.key file or the "
                          "40-character Z85 string (encrypts and authenticates the link)."),
        click.option("--client-key", default=None, type=click.Path(dir_okay=False),
                     help="Our own .key_secret (from `verifyd keygen DIR --name NAME`), for a "
                          "daemon with an allow-list [default: a fresh key per run]."),
        click.option("--heartbeat", type=float, default=1.0, show_default=True,
                     help="Seconds between heartbeats; a daemon silent for 3 is dropped."),
        click.option("--connect-timeout", type=float, default=10.0, show_default=True,
                     help="Seconds a connection attempt (HELLO) may take."),
        click.option("--reconnect-for", type=float, default=60.0, show_default=True,
                     help="Seconds to keep reconnecting to a lost daemon before giving up."),
        click.option("--busy-for", type=float, default=120.0, show_default=True,
                     help="Seconds to keep retrying a daemon that answers 'busy' (it says "
                          "when to retry) before giving up; the conversation is kept."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


CONFIG_OPTIONS = ("server_key", "client_key", "heartbeat", "connect_timeout", "reconnect_for",
                  "busy_for", "draft_shape", "chain")


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sampling options, the rest of the client's config) from one command's extra
    keyword arguments."""
    link = {name: options.pop(name) for name in CONFIG_OPTIONS}
    return options, link


def _config(server: str, draft: str, threads: int | None, draft_tokens: int, fixed_k: bool,
            pipeline: bool, timeout: float, cache_dir: str | None, server_key: str | None,
            client_key: str | None, heartbeat: float, connect_timeout: float,
            reconnect_for: float, busy_for: float = 120.0, seeded: bool = False,
            draft_shape: str = "chain", chain: bool = True) -> ClientConfig:
    from edgespec.models.paths import ModelNotFound, default_cache_dir, resolve_draft

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        draft_path = resolve_draft(draft, cache)
    except ModelNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    return ClientConfig(
        server=server, draft_path=str(draft_path),
        threads=threads or 0, draft_tokens=draft_tokens,
        adaptive=not fixed_k, pipeline=pipeline, chain=chain, timeout_s=timeout,
        timed_k=not seeded,
        server_key=server_key, client_key=client_key, heartbeat_s=heartbeat,
        connect_timeout_s=connect_timeout, reconnect_for_s=reconnect_for,
        busy_for_s=busy_for, draft_shape=draft_shape,
    )


def _connect(config: ClientConfig) -> Any:
    from edgespec.edge_client.client import EdgeClient
    from edgespec.wire.errors import WireError

    try:
        return EdgeClient(config)
    except (WireError, ValueError) as exc:  # ValueError: an unusable key
        raise click.ClickException(f"cannot use {config.server}: {exc}") from exc


@click.group()
def main() -> None:
    """Speculative decoding with the draft on this machine and the target on a verifyd."""


# ---------------------------------------------------------------- generate


def _read_prompts(prompt: str | None, prompt_file: str | None) -> Iterator[dict[str, Any]]:
    if prompt is not None:
        yield {"id": None, "prompt": prompt}
        return
    assert prompt_file is not None
    with open(prompt_file, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                    raise ValueError('each line needs a string "prompt"')
            except ValueError as exc:
                yield {"id": f"line {number}", "error": f"bad prompt line {number}: {exc}"}
                continue
            yield item


@main.command(context_settings={"show_default": True})
@_common
@click.option("--prompt", default=None, help="One prompt.")
@click.option("--prompt-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSON lines: {"id": ..., "prompt": ..., and optionally "max_tokens", '
                   '"draft_tokens", "raw", "temperature", "top_k", "top_p", "seed", '
                   '"verify"}.')
@click.option("--raw", is_flag=True, help="Send the prompt as is, without the chat template.")
@click.option("--max-tokens", type=click.IntRange(1, 32768), default=256)
@click_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per prompt on stdout.")
def generate(server: str, draft: str, threads: int | None, draft_tokens: int, fixed_k: bool,
             pipeline: bool, timeout: float, cache_dir: str | None, trace_path: str | None,
             prompt: str | None,
             prompt_file: str | None, raw: bool, max_tokens: int, as_json: bool,
             **options: Any) -> None:
    """Answer prompts non-interactively."""
    from edgespec.wire.errors import WireError

    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give exactly one of --prompt and --prompt-file")
    sampling, link = _split_options(options)
    opts = SamplingOptions(**sampling)
    config = _config(server, draft, threads, draft_tokens, fixed_k, pipeline, timeout,
                     cache_dir, **link)
    client = _connect(config)
    failed = 0
    with _open_trace(trace_path) as trace:
        for item in _read_prompts(prompt, prompt_file):
            result: dict[str, Any] = {"id": item.get("id")} if prompt_file else {}
            if "error" in item:  # a bad prompt-file line
                result["error"] = item["error"]
            else:
                try:
                    result.update(
                        _answer_prompt(client, item, raw, draft_tokens, max_tokens, trace,
                                       opts))
                except (WireError, ValueError, TypeError) as exc:
                    result["error"] = f"{type(exc).__name__}: {exc}"
            failed += "error" in result
            _emit(result, as_json)
    client.close()
    if failed and not as_json:
        sys.exit(1)


def _answer_prompt(client: Any, item: dict[str, Any], raw: bool, draft_tokens: int,
                   max_tokens: int, trace: Any,
                   options: SamplingOptions | None = None) -> dict[str, Any]:
    """One prompt-file line (or --prompt) through a fresh session, as the --json fields."""
    from edgespec.edge_client.client import new_session_id
    from edgespec.edge_client.stats import GenerationStats

    text = item["prompt"]
    tokens = (client.prompt_tokens(text) if item.get("raw", raw)
              else client.chat_tokens([{"role": "user", "content": text}]))
    prompt_ids = list(tokens)
    k = int(item.get("draft_tokens", draft_tokens))
    limit = int(item.get("max_tokens", max_tokens))
    if not (0 <= k <= 64 and 1 <= limit <= 32768):
        raise ValueError("draft_tokens must be in 0..64 and max_tokens in 1..32768")
    opts = (options or SamplingOptions()).with_overrides(item)
    sampling = opts.resolve()
    stats = GenerationStats()
    sid = new_session_id()
    policy = client.new_policy(k)
    policy.timed = not opts.seeded  # a seeded run must cut its rounds the same way each time
    for _ in client.generate(sid, tokens, limit, stats, policy=policy, trace=trace,
                             sampling=sampling,
                             on_wait=lambda note: click.echo(note, err=True)):
        pass
    client.end_session(sid)
    generated = tokens[len(prompt_ids):]
    result = dict(prompt_token_ids=prompt_ids, token_ids=generated,
                  text=client.text(generated), stats=stats.as_dict())
    if client.translation is not None:  # the ids above are the target's; the draft's here
        result.update(draft_prompt_token_ids=client.draft_ids(client.text(prompt_ids)),
                      draft_token_ids=client.draft_ids(result["text"]))
    return result


def _open_trace(path: str | None) -> contextlib.AbstractContextManager[Any]:
    """A ``TraceWriter`` on ``path`` (closed on exit), or a no-op when none was asked for."""
    if path is None:
        return contextlib.nullcontext()
    from edgespec.edge_client.trace import TraceWriter

    try:
        return TraceWriter(path)
    except OSError as exc:
        raise click.ClickException(f"cannot write trace {path}: {exc}") from exc


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result))
    elif "error" in result:
        click.echo(f"error: {result['error']}", err=True)
    else:
        click.echo(result["text"])
        s = result["stats"]
        click.echo(f"[{s['generated']} tokens, {s['tokens_per_s']} tok/s, acceptance "
                   f"{s['acceptance_rate']:.1%}, {s['rounds']} rounds, verify {s['verify']}"
                   + (f", seed {s['seed']}" if s["seed"] else "") + "]", err=True)


# ---------------------------------------------------------------- chat


@main.command()
@_common
@click.option("--max-tokens", type=click.IntRange(1, 32768), default=512, show_default=True)
@click.option("--system", default=None, help="Optional system prompt.")
@click_options
def chat(server: str, draft: str, threads: int | None, draft_tokens: int, fixed_k: bool,
         pipeline: bool, timeout: float, cache_dir: str | None, trace_path: str | None,
         max_tokens: int, system: str | None, **options: Any) -> None:
    """Chat in the terminal; /reset, /retry, /stats, /quit."""
    from edgespec.edge_client.chat_ui import run_chat
    from edgespec.wire.errors import WireError

    sampling, link = _split_options(options)
    opts = SamplingOptions(**sampling)
    try:
        resolved = opts.resolve()
    except (ValueError, WireError) as exc:
        raise click.UsageError(str(exc)) from exc
    config = _config(server, draft, threads, draft_tokens, fixed_k, pipeline, timeout,
                     cache_dir, seeded=opts.seeded, **link)
    client = _connect(config)
    with _open_trace(trace_path) as trace:
        run_chat(client, max_tokens, system, trace, resolved)


# ---------------------------------------------------------------- doctor


@main.command()
@doctor_options
def doctor(**options: Any) -> None:
    """Will this machine run edgespec well? Checks, measurements and fixes."""
    run_doctor("edgespec doctor", **options)


# ---------------------------------------------------------------- serve


@main.command(context_settings={"show_default": True})
@_common
@click.option("--host", default="127.0.0.1",
              help="Address to listen on (loopback: only this machine).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000,
              help="HTTP port (0 = any free port, printed when ready).")
@click.option("--max-queue", type=click.IntRange(0, 4096), default=16,
              help="Requests that may wait behind the one being answered; more get "
                   "HTTP 429 with Retry-After.")
@click.option("--max-body", type=click.IntRange(1024), default=1 << 20,
              help="Largest request body in bytes (larger: HTTP 413).")
@click.option("--model-name", default=None,
              help="The model id clients ask for [default: the target's name].")
def serve(server: str, draft: str, threads: int | None, draft_tokens: int, fixed_k: bool,
          pipeline: bool, timeout: float, cache_dir: str | None, trace_path: str | None,
          host: str, port: int, max_queue: int, max_body: int, model_name: str | None,
          **options: Any) -> None:
    """OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models) and a
    chat page at http://HOST:PORT/, drafting here and verifying on verifyd."""
    from edgespec.edge_client.serve.app import run_server

    _, link = _split_options(options)
    config = _config(server, draft, threads, draft_tokens, fixed_k, pipeline, timeout,
                     cache_dir, **link)
    with _open_trace(trace_path) as trace:
        run_server(config, host, port, max_queue, max_body, model_name, trace)


read_from_environment(main, "EDGESPEC")

if __name__ == "__main__":
    main()
