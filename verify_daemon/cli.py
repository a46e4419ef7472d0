"""``verifyd``: serve a target model to edge clients over ZeroMQ."""

from __future__ import annotations

import contextlib
import logging

import click
from edgespec.verify_daemon.config import DaemonConfig


@click.command(context_settings={"show_default": True})
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
@click.option("--threads", type=int, default=0,
              help="torch CPU threads (0 = torch default: one per core).")
@click.option("--max-sessions", type=int, default=64, help="Concurrent sessions before 'busy'.")
@click.option("--max-draft", type=int, default=32, help="Longest draft accepted per round.")
@click.option("--max-context", type=int, default=8192, help="Longest session in tokens.")
@click.option("--kv-budget", default="auto",
              help="KV memory: tokens (32768), bytes with a unit (2GiB) or auto (32768 tokens "
                   "on CPU, half the free GPU memory on CUDA).")
@click.option("--step-tokens", type=int, default=0,
              help="Most tokens, all sessions together, in one forward pass "
                   "(0 = auto: 256 on CPU, 2048 on CUDA).")
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
@click.option("-v", "--verbose", is_flag=True, help="Log every error reply.")
def main(port: int, bind: str, target: str, device: str, dtype: str, threads: int,
         max_sessions: int, max_draft: int, max_context: int, kv_budget: str,
         step_tokens: int, block_size: int, batch_window_ms: float, session_idle: float,
         stats_file: str | None, cache_dir: str | None, prepare: bool, verbose: bool) -> None:
    """Verify edge clients' drafts with the full target model."""
    import signal
    from pathlib import Path

    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir
    from edgespec.verify_daemon.config import parse_kv_budget
    from edgespec.verify_daemon.engine import Engine
    from edgespec.verify_daemon.model_runner import ModelRunner
    from edgespec.verify_daemon.server import Server

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s verifyd %(levelname)s %(message)s")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    resolved = resolve_target(None if target == "default" else target, cache)
    if prepare:
        click.echo(f"target ready: {resolved}")
        return
    try:
        budget_tokens, budget_bytes = parse_kv_budget(kv_budget)
        config = DaemonConfig(
            target=resolved,
            bind=bind, port=port, device=device, dtype=dtype, threads=threads,
            max_sessions=max_sessions, max_draft_tokens=max_draft, max_context=max_context,
            step_tokens=step_tokens, kv_budget_tokens=budget_tokens,
            kv_budget_bytes=budget_bytes, block_size=block_size,
            batch_window_ms=batch_window_ms, session_idle_s=session_idle,
            stats_file=stats_file or "",
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    runner = ModelRunner(config.target, config.device, config.dtype, config.threads,
                         config.kv_budget_tokens, config.kv_budget_bytes, config.block_size)
    server = Server(Engine(runner, config), config.endpoint)
    # SIGTERM ends the loop like Ctrl-C, so the last counters reach the stats file.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(stats_file=config.stats_file)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
