"""Run ``verifyd`` as a separate process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DaemonProcess:
    process: subprocess.Popen[str]
    endpoint: str
    log: Path

    def kill(self) -> None:
        """kill -9: no goodbye, no flushed sockets, as a crash or a pulled plug."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[str]) -> None:
    """SIGTERM (a clean exit flushes stats and sockets); SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A loopback port free right now, for a daemon that must restart on the same port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(target: Path | str, log: Path, *extra: str, threads: int = 2,
                 timeout_s: float = 180.0, port: int = 0) -> DaemonProcess:
    """Start ``verifyd`` (``port`` 0: any free one; ``threads`` 0: its own default) and wait
    for its ready line, which names the endpoint."""
    cmd = [sys.executable, "-m", "edgespec.verify_daemon.cli", "--port", str(port),
           "--target", str(target), *(["--threads", str(threads)] if threads else []), "-v",
           *extra]
    process, endpoint = start_until_ready(cmd, log, r"verifyd ready on (\S+)", "verifyd",
                                          timeout_s)
    return DaemonProcess(process, endpoint, log)


def start_until_ready(cmd: list[str], log: Path, ready: str, name: str, timeout_s: float
                      ) -> tuple[subprocess.Popen[str], str]:
    """Start ``cmd`` with its output in ``log``; wait for the line matching ``ready`` and
    return the process and the line's first group (the address it serves)."""
    with log.open("w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(ready, log.read_text())
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{name} did not become ready:\n{log.read_text()}")
