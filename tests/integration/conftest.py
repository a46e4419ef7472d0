"""``edgespec serve`` on the shared daemon, and ``edgespec generate --json`` answers to hold
its answers against (both real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from edgespec.tools.serve_proc import ServeProcess, start_serve

THREADS = int(os.environ.get("EDGESPEC_TEST_THREADS", "1"))


@pytest.fixture(scope="session")
def served(daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    s = start_serve(daemon.endpoint, tmp_path_factory.mktemp("serve") / "serve.log",
                    threads=THREADS)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def generated(daemon) -> Callable[..., dict[str, Any]]:
    """``generated(prompt, max_tokens, *flags)``: ``edgespec generate --json``'s object for
    one prompt (memoised: several tests compare against the same answer)."""
    memo: dict[tuple[Any, ...], dict[str, Any]] = {}

    def run(prompt: str, max_tokens: int, *flags: str) -> dict[str, Any]:
        key = (prompt, max_tokens, *flags)
        if key not in memo:
            done = subprocess.run(
                [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
                 daemon.endpoint, "--threads", str(THREADS), "--prompt", prompt,
                 "--max-tokens", str(max_tokens), "--json", *flags],
                capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            memo[key] = json.loads(done.stdout)
            assert "error" not in memo[key], memo[key]
        return memo[key]

    return run
