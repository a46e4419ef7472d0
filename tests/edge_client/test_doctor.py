"""`edgespec doctor` / `verifyd doctor`: the JSON scripts read; failures exit non-zero."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def doctor(*args: str, command: str = "edgespec.edge_client.cli") -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", command, "doctor", "--json", *args],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, json.loads(done.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in report["checks"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_healthy_machine_reports_every_field_and_measures(target_dir: Path, cache_dir: Path):
    code, report = doctor("--cache-dir", str(cache_dir))
    assert code == 0, report
    checks = by_name(report)
    for name in ("python", "llama.cpp", "AMX", "torch", "zeromq", "cache", "draft model",
                 "target model", "draft speed", "target speed"):
        assert checks[name]["status"] in ("ok", "warn"), checks.get(name)
    for key in ("cpu", "cores", "draft_threads_local", "daemon_threads_loopback",
                "llama_system_info"):
        assert key in report["machine"]
    m = report["measurements"]
    assert m["draft_ms_per_token"] > 0
    assert 0 < m["target_forward_ms_w1"] < 10 * m["target_forward_ms_w8"]


def test_a_cache_dir_that_is_a_file_fails_with_the_fix(tmp_path: Path):
    broken = tmp_path / "not-a-dir"
    broken.write_text("x")
    code, report = doctor("--cache-dir", str(broken), "--no-bench")
    assert code == 1 and not report["ok"]
    cache = by_name(report)["cache"]
    assert cache["status"] == "fail" and "--cache-dir" in cache["fix"]


def test_an_unreachable_server_fails_with_the_fix(tmp_path: Path):
    code, report = doctor("--cache-dir", str(tmp_path), "--no-bench",
                          "--server", f"tcp://127.0.0.1:{free_port()}",
                          command="edgespec.verify_daemon.cli")
    assert code == 1
    server = by_name(report)["server"]
    assert server["status"] == "fail" and "verifyd --port" in server["fix"]


@pytest.mark.slow
def test_a_live_daemon_is_checked_end_to_end(daemon, cache_dir: Path):
    code, report = doctor("--cache-dir", str(cache_dir), "--no-bench",
                          "--server", daemon.endpoint)
    assert code == 0, report
    checks = by_name(report)
    assert checks["server"]["status"] == "ok"
    assert checks["tokenizer"]["status"] == "ok"
    assert checks["encryption"]["value"] == "plain TCP on loopback"
    assert report["machine"]["thread_split"]["reason"] == "same machine"
    assert report["measurements"]["hello_rtt_ms"] > 0
