"""``verifyd``: serve a target model to edge clients over ZeroMQ."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import Any

import click
from edgespec.edge_client.doctor import doctor_options, run_doctor
from edgespec.edge_client.env_options import read_from_environment
from edgespec.verify_daemon.config import DaemonConfig


@click.group(invoke_without_command=True, context_settings={"show_default": True})
@click.option("--port", type=int, default=5557,
              help="TCP port to listen on (0 = any free port, printed when ready).")
@click.option("--bind", default="127.0.0.1", help="Address to bind (loopback by default).")
@click.option("--target", default="default",
              help="HF model id, local model directory, a .gguf to dequantize, or 'default' "
                   "(SmolLM2-135M-Instruct dequantized from the bundled GGUF).")
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N")
@click.option("--dtype", default="auto",
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              help="auto = float32 on CPU, bfloat16 on CUDA.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch CPU threads (0 = auto: bound to loopback, clients draft on this "
                   "machine, so the larger half of the cores; otherwise all of them).")
@click.option("--max-sessions", type=int, default=64, help="Concurrent sessions before 'busy'.")
@click.option("--max-draft", type=int, default=32, help="Longest draft accepted per round.")
@click.option("--max-context", type=int, default=8192, help="Longest session in tokens.")
@click.option("--kv-budget", default="auto",
              help="KV memory: tokens (32768), bytes with a unit (2GiB) or auto (32768 tokens "
                   "on CPU, half the free GPU memory on CUDA).")
@click.option("--step-tokens", type=int, default=0,
              help="Most tokens, all sessions together, in one forward pass "
                   "(0 = auto: 256 on CPU, 2048 on CUDA).")
@click.option("--step-ms", type=float, default=0.0,
              help="Time budget of a step while users wait for verdicts: prompt prefill is "
                   "cut to fit it, at the measured cost per token (0 = auto: 150 on CPU, 50 "
                   "on CUDA).")
@click.option("--draft-budget", type=click.Choice(["goodput", "share"]), default="goodput",
              show_default=True,
              help="The draft length each VERDICT asks for: share (of a step's tokens), or "
                   "goodput (the share, and while the server is the bottleneck the draft "
                   "lengths that verify the most tokens a second; draft_budget.py).")
@click.option("--gemm", type=click.Choice(["auto", "plain"]), default="auto", show_default=True,
              help="CPU linear layers at verify widths (2-12 rows): auto measures once per "
                   "machine (cached) whether (W @ xT)T beats torch's x @ WT at each width and "
                   "uses the faster; plain keeps torch's (small_gemm.py).")
@click.option("--block-size", type=int, default=16, help="Tokens per KV block.")
@click.option("--batch-window-ms", type=float, default=2.0,
              help="How long a step waits for sessions about to send (0 = never).")
@click.option("--session-idle", type=float, default=600.0,
              help="Seconds before an idle session (a vanished client) is freed.")
@click.option("--stats-file", type=click.Path(dir_okay=False), default=None,
              help="Keep JSON counters (steps, tokens, KV blocks, evictions) in this file.")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Where converted models are cached (default: ~/.cache/edgespec).")
@click.option("--prepare", is_flag=True,
              help="Only convert and cache the target (with progress), then exit.")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False), default=None,
              help="Directory made by `verifyd keygen`: serve CurveZMQ (encrypted, "
                   "authenticated) with its server.key_secret.")
@click.option("--allow", "allow_dir", type=click.Path(file_okay=False), default=None,
              help="Directory of client public keys (*.key) allowed in (with --keys); "
                   "re-read when it changes, no restart needed. Default: any client that "
                   "knows the server key.")
@click.option("--insecure", is_flag=True,
              help="Serve plain TCP on a non-loopback address (anyone can connect and read "
                   "the traffic).")
@click.option("--max-rate", type=float, default=500.0,
              help="Requests per second allowed on one connection.")
@click.option("--max-sessions-per-peer", type=int, default=16,
              help="Sessions one connection may hold at once.")
@click.option("--max-sessions-per-key", type=int, default=16,
              help="Sessions one CURVE client key may hold at once.")
@click.option("--max-sessions-per-address", type=int, default=16,
              help="Sessions one source address (IPv6: one /64) may hold at once.")
@click.option("--max-prefill-per-address", type=int, default=16_384,
              help="Prompt tokens one source address may have waiting for prefill.")
@click.option("--max-msg-size", type=int, default=256 << 10,
              help="ZMQ_MAXMSGSIZE in bytes, per frame (the largest legitimate frame is a "
                   "full DRAFT q, 256 KiB): a larger frame drops its connection.")
@click.option("--max-backlog", type=int, default=4 << 20,
              help="Bytes a connection may have sent that the daemon has not read as "
                   "messages (a half-sent message of any frame count); past it the "
                   "connection is dropped.")
@click.option("--hwm", type=int, default=100,
              help="ZMQ send/receive high-water mark (messages queued per connection).")
@click.option("--max-connections", type=int, default=512,
              help="TCP connections in all; more are closed as they arrive.")
@click.option("--max-connections-per-address", type=int, default=32,
              help="TCP connections from one source address (IPv6: one /64).")
@click.option("--handshake-timeout", type=float, default=10.0,
              help="Seconds a new connection has to finish its ZMTP (and CURVE) handshake.")
@click.option("--heartbeat", type=float, default=2.0,
              help="Seconds between ZMTP heartbeats to each client.")
@click.option("--heartbeat-timeout", type=float, default=6.0,
              help="Seconds of silence before a client's connection is dropped.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (0 = any free port, printed) "
                   "[default: off].")
@click.option("--metrics-bind", default="127.0.0.1",
              help="Address for --metrics-port (loopback by default; 0.0.0.0 to let a "
                   "Prometheus elsewhere scrape it).")
@click.option("-v", "--verbose", is_flag=True, help="Log every error reply.")
@click.pass_context
def main(ctx: click.Context, port: int, bind: str, target: str, device: str, dtype: str,
         threads: int, max_sessions: int, max_draft: int, max_context: int, kv_budget: str,
         step_tokens: int, draft_budget: str, gemm: str, block_size: int, batch_window_ms: float,
         session_idle: float, stats_file: str | None, cache_dir: str | None, prepare: bool,
         keys_dir: str | None,
         allow_dir: str | None, insecure: bool, max_rate: float, max_sessions_per_peer: int,
         max_msg_size: int, hwm: int, heartbeat: float, heartbeat_timeout: float,
         verbose: bool, metrics_port: int | None, metrics_bind: str, step_ms: float,
         max_sessions_per_key: int, max_sessions_per_address: int,
         max_prefill_per_address: int, max_backlog: int, max_connections: int,
         max_connections_per_address: int, handshake_timeout: float) -> None:
    """Verify edge clients' drafts with the full target model (`verifyd keygen DIR` first
    makes the keys for an encrypted server)."""
    if ctx.invoked_subcommand is not None:
        return
    import signal
    from pathlib import Path

    from edgespec.models.convert import resolve_target
    from edgespec.models.cpu import daemon_threads
    from edgespec.models.paths import default_cache_dir
    from edgespec.verify_daemon.config import parse_kv_budget
    from edgespec.verify_daemon.engine import Engine
    from edgespec.verify_daemon.limits import PeerLimits
    from edgespec.verify_daemon.model_runner import ModelRunner
    from edgespec.verify_daemon.server import Server
    from edgespec.wire.curve import BadKey

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s verifyd %(levelname)s %(message)s")
    _check_exposure(bind, keys_dir, allow_dir, insecure)
    try:
        peer_limits = PeerLimits(
            max_rate=max_rate, max_sessions_per_peer=max_sessions_per_peer,
            max_msg_bytes=max_msg_size, hwm=hwm, heartbeat_s=heartbeat,
            heartbeat_timeout_s=heartbeat_timeout, max_sessions_per_key=max_sessions_per_key,
            max_sessions_per_address=max_sessions_per_address,
            max_prefill_per_address=max_prefill_per_address, max_backlog_bytes=max_backlog,
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
            handshake_timeout_s=handshake_timeout)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    resolved = resolve_target(None if target == "default" else target, cache)
    if prepare:
        click.echo(f"target ready: {resolved}")
        return
    explicit_threads = threads > 0
    threads = daemon_threads(threads, _is_loopback(bind))
    try:
        budget_tokens, budget_bytes = parse_kv_budget(kv_budget)
        config = DaemonConfig(
            target=resolved,
            bind=bind, port=port, device=device, dtype=dtype, threads=threads,
            max_sessions=max_sessions, max_draft_tokens=max_draft, max_context=max_context,
            step_tokens=step_tokens, step_ms=step_ms, kv_budget_tokens=budget_tokens,
            kv_budget_bytes=budget_bytes, block_size=block_size,
            batch_window_ms=batch_window_ms, session_idle_s=session_idle,
            stats_file=stats_file or "", draft_budget=draft_budget, gemm=gemm,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    runner = ModelRunner(config.target, config.device, config.dtype, config.threads,
                         config.kv_budget_tokens, config.kv_budget_bytes, config.block_size,
                         gemm=config.gemm, cache_dir=cache)
    try:
        server = Server(Engine(runner, config), config.endpoint, peer_limits=peer_limits,
                        keys_dir=Path(keys_dir) if keys_dir else None,
                        allow_dir=Path(allow_dir) if allow_dir else None)
    except BadKey as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"verifyd: {runner.info.cpu_threads} CPU threads ("
               + ("--threads" if explicit_threads else
                  "auto: loopback, clients on this machine take the rest" if _is_loopback(bind)
                  else "auto: every core") + ")", err=True)
    if keys_dir:
        click.echo(f"verifyd: CURVE on, server key {server.curve.keys.public.decode()}"
                   + (f", clients allowed from {allow_dir}" if allow_dir else
                      ", any client that knows the server key"), err=True)
    if metrics_port is not None:  # fed by the server after each step, scraped on a thread
        from edgespec.verify_daemon.metrics import Metrics

        server.metrics = Metrics(server)
        try:
            bound = server.metrics.serve(metrics_port, metrics_bind)
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve metrics on {metrics_bind}:{metrics_port}: {exc}") from exc
        shown = f"[{metrics_bind}]" if ":" in metrics_bind else metrics_bind
        click.echo(f"verifyd: metrics on http://{shown}:{bound}/metrics", err=True)
    # SIGTERM ends the loop like Ctrl-C, so the last counters reach the stats file.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(stats_file=config.stats_file)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False  # "*", a hostname or an interface name: assume it is reachable


def _check_exposure(bind: str, keys_dir: str | None, allow_dir: str | None,
                    insecure: bool) -> None:
    """Secure by default: plain TCP only on loopback, unless the operator insists."""
    if allow_dir and not keys_dir:
        raise click.UsageError("--allow needs --keys (the allow-list is checked by CURVE)")
    if keys_dir or _is_loopback(bind):
        return
    if not insecure:
        raise click.UsageError(
            f"refusing to serve {bind} without encryption: run `verifyd keygen DIR` and pass "
            "--keys DIR (or --insecure to serve plain TCP to anyone who can reach it)")
    click.secho(f"WARNING: verifyd serves {bind} UNENCRYPTED and UNAUTHENTICATED (--insecure): "
                "anyone who can reach this port can use the model and read every prompt.",
                fg="red", bold=True, err=True)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", default="server", show_default=True,
              help="Key name: NAME.key (public, give it out) and NAME.key_secret (mode 0600).")
def keygen(directory: str, name: str) -> None:
    """Create a CurveZMQ key pair in DIRECTORY (the server's, or a client's with --name)."""
    from edgespec.wire.curve import BadKey, load_public_key
    from edgespec.wire.curve import keygen as make_keys

    try:
        public, secret = make_keys(directory, name)
    except BadKey as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"public key  {public}  ({load_public_key(str(public)).decode()})")
    click.echo(f"secret key  {secret}  (mode 0600: keep it on this machine)")


@main.command()
@doctor_options
def doctor(**options: Any) -> None:
    """Will this machine serve edgespec well? Checks, measurements and fixes."""
    run_doctor("verifyd doctor", **options)


read_from_environment(main, "VERIFYD")

if __name__ == "__main__":
    main()
