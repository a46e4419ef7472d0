"""Run ``edgespec serve`` as a separate process on a free loopback port, for tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgespec.tools.daemon_proc import start_until_ready, stop_process


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT/
    log: Path

    def stop(self) -> None:
        stop_process(self.process)


def start_serve(server: str, log: Path, *extra: str, threads: int = 1,
                timeout_s: float = 120.0, command: list[str] | None = None) -> ServeProcess:
    """Start ``edgespec serve`` against ``server`` on any free port and wait for its ready
    line, which names the URL (``command``: another ``edgespec``, e.g. an installed one)."""
    cmd = [*(command or [sys.executable, "-m", "edgespec.edge_client.cli"]), "serve",
           "--server", server, "--port", "0", "--threads", str(threads), *extra]
    process, url = start_until_ready(cmd, log, r"edgespec serve ready on (http://\S+/)",
                                     "edgespec serve", timeout_s)
    return ServeProcess(process, url, log)
