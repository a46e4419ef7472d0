"""Record a trace with the real client, then replay it against the same daemon."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from edgespec.edge_client.trace import read_trace
from edgespec.tools.replay import load_sessions

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "edgespec.edge_client.cli"]
REPLAY = [sys.executable, "-m", "edgespec.tools.replay"]


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_recorded_trace_replays_without_divergence(daemon, draft_gguf, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "prompt": p}) for i, p in enumerate(
        ["Name three primary colors.", "Write a haiku about the sea."])))
    trace = tmp_path / "t.jsonl"
    done = subprocess.run([*CLI, "generate", "--server", daemon.endpoint, "--draft",
                           str(draft_gguf), "--prompt-file", str(prompts), "--threads", "1",
                           "--max-tokens", "32", "--trace", str(trace), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = read_trace(trace)
    recorded = load_sessions((str(trace),))
    assert len(recorded) == 2
    rounds_per_session = [sum(r["kind"] == "round" for r in s) for s in recorded]
    assert sum(rounds_per_session) == sum(r["kind"] == "round" for r in records) > 0

    done = subprocess.run([*REPLAY, "run", str(trace), "--server", daemon.endpoint,
                           "--sessions", "3", "--pace", "fast", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = _last_json(done.stdout)
    assert got["errors"] == {} and got["diverged_rounds"] == 0
    assert got["sessions"] == 3
    assert got["rounds"] == sum(rounds_per_session[i % 2] for i in range(3))
    assert got["verified_tokens"] > 0 and got["tokens_per_s"] > 0

    done = subprocess.run([*REPLAY, "summary", str(trace), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = _last_json(done.stdout)
    assert summary["rounds"] == sum(rounds_per_session) and summary["sessions"] == 2


def test_a_seeded_sampling_trace_replays_exactly(daemon, draft_gguf, tmp_path):
    """With the recorded seed and q the daemon draws the same tokens: every verdict checks."""
    trace = tmp_path / "s.jsonl"
    done = subprocess.run([*CLI, "generate", "--server", daemon.endpoint, "--draft",
                           str(draft_gguf), "--prompt", "Tell me a short story.", "--threads",
                           "1", "--max-tokens", "48", "--temperature", "0.9", "--top-p", "0.95",
                           "--seed", "5", "--trace", str(trace), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rounds = [r for r in read_trace(trace) if r["kind"] == "round"]
    assert rounds and all("q" in r for r in rounds if r["draft"])
    assert any(r["accepted"] < len(r["draft"]) for r in rounds)  # a rejection was replayed
    for extra in ([], ["--target-only"]):
        done = subprocess.run([*REPLAY, "run", str(trace), "--server", daemon.endpoint,
                               "--sessions", "2", "--pace", "fast", "--json", *extra],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        got = _last_json(done.stdout)
        assert got["errors"] == {} and got["diverged_rounds"] == 0, (extra, got)
        assert got["verified_tokens"] == 2 * sum(r["accepted"] + 1 for r in rounds)
