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
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Where converted models are cached (default: ~/.cache/edgespec).")
@click.option("--prepare", is_flag=True,
              help="Only convert and cache the target (with progress), then exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log every error reply.")
def main(port: int, bind: str, target: str, device: str, dtype: str, threads: int,
         max_sessions: int, max_draft: int, max_context: int, cache_dir: str | None,
         prepare: bool, verbose: bool) -> None:
    """Verify edge clients' drafts with the full target model."""
    from pathlib import Path

    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir
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
    config = DaemonConfig(
        target=resolved,
        bind=bind, port=port, device=device, dtype=dtype, threads=threads,
        max_sessions=max_sessions, max_draft_tokens=max_draft, max_context=max_context,
    )
    runner = ModelRunner(config.target, config.device, config.dtype, config.threads)
    server = Server(Engine(runner, config), config.endpoint)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
