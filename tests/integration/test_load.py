"""Many users on one verifyd: real llama.cpp clients in their own processes against a daemon
in its own process, checked token by token against the target alone; busy, eviction and
vanished clients against a daemon with a tiny budget."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.stats import GenerationStats
from edgespec.edge_client.transport import Link, expect
from edgespec.tools.daemon_proc import start_daemon
from edgespec.tools.prompts import CHAT_PROMPTS, humaneval_prompts
from edgespec.wire.codec import Close, Open, Opened
from edgespec.wire.errors import UnknownSession

from ..conftest import THREADS

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "edgespec.edge_client.cli"]
MAX_NEW = 40


def stats_of(path: Path, settle_s: float = 1.3) -> dict:
    time.sleep(settle_s)  # the daemon rewrites the file about once a second
    return dict(json.loads(path.read_text()))


def test_eight_concurrent_clients_are_each_exact(target_dir, draft_gguf, check_exact,
                                                 tmp_path):
    stats_file = tmp_path / "stats.json"
    daemon = start_daemon(target_dir, tmp_path / "verifyd.log", "--step-tokens", "96",
                          "--stats-file", str(stats_file), threads=THREADS)
    prompts = [(p, False) for p in CHAT_PROMPTS[:4]] + [(p, True) for p in humaneval_prompts(4)]
    procs = []
    try:
        for i, (prompt, raw) in enumerate(prompts):
            line = {"id": i, "prompt": prompt, "raw": raw, "draft_tokens": (0, 2, 4, 8, 16)[i % 5]}
            path = tmp_path / f"p{i}.jsonl"
            path.write_text(json.dumps(line))
            procs.append(subprocess.Popen(
                [*CLI, "generate", "--server", daemon.endpoint, "--draft", str(draft_gguf),
                 "--prompt-file", str(path), "--max-tokens", str(MAX_NEW), "--threads", "1",
                 "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            time.sleep(0.3 * (i % 3))  # staggered starts
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        stats = stats_of(stats_file)
    finally:
        for proc in procs:
            proc.kill()
        daemon.stop()
    for result in results:
        assert "error" not in result, result
        check_exact(result["prompt_token_ids"], result["token_ids"], MAX_NEW)
    assert stats["steps"] < stats["rounds"]  # sessions shared forward passes
    assert stats["kv_blocks_peak"] <= stats["kv_blocks_total"]


# ---------------------------------------------------------------- a daemon that is tiny


@pytest.fixture(scope="module")
def small_daemon(target_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("small")
    stats_file = work / "stats.json"
    # 256 tokens of KV (16 blocks), two sessions, idle sessions freed after 4 s
    d = start_daemon(target_dir, work / "verifyd.log", "--max-sessions", "2", "--kv-budget",
                     "256", "--max-draft", "16", "--session-idle", "4", "--stats-file",
                     str(stats_file), threads=THREADS)
    d.stats_file = stats_file
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(small_daemon, draft_gguf):
    c = EdgeClient(ClientConfig(server=small_daemon.endpoint, draft_path=str(draft_gguf),
                                threads=THREADS, draft_tokens=8))
    yield c
    c.close()


def _hold(link: Link, n: int) -> int:
    """A session of ``n`` tokens no other session shares (a shared prefix takes no memory)."""
    sid = new_session_id()
    start = 100 + secrets.randbelow(40000)
    expect(link.request(Open(list(range(start, start + n)), 8), sid), Opened)
    return sid


def test_busy_server_makes_the_client_wait_and_retry(small_daemon, client, check_exact):
    holder = Link(small_daemon.endpoint)
    held = [_hold(holder, 20), _hold(holder, 20)]  # the daemon is full
    notes: list[str] = []

    def on_wait(note: str) -> None:
        notes.append(note)
        if len(notes) == 2:  # after two refusals, a seat frees up
            holder.request(Close(), held.pop())

    tokens = client.chat_tokens([{"role": "user", "content": CHAT_PROMPTS[0]}])
    prompt = list(tokens)
    try:
        sid = new_session_id()
        for _ in client.generate(sid, tokens, 24, GenerationStats(), on_wait=on_wait):
            pass
        client.end_session(sid)
    finally:
        for sid in held:  # expired already when the answer took over --session-idle (slow box)
            with contextlib.suppress(UnknownSession):
                holder.request(Close(), sid)
        holder.close()
    assert len(notes) == 2 and all(n.startswith("server busy, retrying in") for n in notes)
    check_exact(prompt, tokens[len(prompt):], 24)


def test_evicted_session_reopens_transparently_with_identical_output(small_daemon, client,
                                                                     check_exact):
    before = stats_of(small_daemon.stats_file, 0)["evictions"]
    tokens = client.chat_tokens([{"role": "user", "content": CHAT_PROMPTS[2]}])
    prompt = list(tokens)
    stats = GenerationStats()
    sid = new_session_id()
    rounds = client.generate(sid, tokens, 48, stats)
    next(rounds)
    next(rounds)  # our session is idle on the daemon now
    other = Link(small_daemon.endpoint)
    big = _hold(other, 240)  # 15 of 16 blocks (the most one session may ask for): ours goes
    other.request(Close(), big)
    other.close()
    for _ in rounds:
        pass
    client.end_session(sid)
    assert stats.reopens >= 1
    check_exact(prompt, tokens[len(prompt):], 48)
    after = stats_of(small_daemon.stats_file)
    assert after["evictions"] > before
    assert after["kv_blocks_peak"] <= after["kv_blocks_total"] == 16


def test_vanished_client_blocks_are_freed_after_the_idle_timeout(small_daemon):
    link = Link(small_daemon.endpoint)
    _hold(link, 120)
    assert stats_of(small_daemon.stats_file)["kv_blocks_used"] >= 8
    link.close()  # gone without a CLOSE
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = stats_of(small_daemon.stats_file, 0.5)
        if stats["sessions"] == 0:
            break
    assert stats["sessions"] == 0 and stats["kv_blocks_used"] == 0 and stats["expired"] >= 1


def test_chats_share_the_system_prompt_and_stay_exact(small_daemon, client, check_exact):
    """Every chat starts with the template's system prompt: a later session takes its KV
    blocks from the first instead of recomputing them, and its answer is still exact."""
    hits = stats_of(small_daemon.stats_file, 0)["prefix_hit_tokens"]
    for text in CHAT_PROMPTS[4:6]:
        tokens = client.chat_tokens([{"role": "user", "content": text}])
        prompt = list(tokens)
        sid = new_session_id()
        for _ in client.generate(sid, tokens, 24, GenerationStats()):
            pass
        client.end_session(sid)
        check_exact(prompt, tokens[len(prompt):], 24)
    assert stats_of(small_daemon.stats_file)["prefix_hit_tokens"] >= hits + 16
