"""A daemon killed, stalled or gone for good: the client notices within the heartbeat
timeout, reconnects with backoff, re-opens with its history, and never loses or invents a
token (each answer is compared with the target alone, token by token)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.stats import GenerationStats
from edgespec.edge_client.transport import DaemonUnavailable
from edgespec.tools.daemon_proc import DaemonProcess, free_port, start_daemon
from edgespec.tools.prompts import CHAT_PROMPTS

pytestmark = pytest.mark.slow

HEARTBEAT_S = 0.5  # the client drops a silent daemon after 3 heartbeats: 1.5 s
DAEMON_FLAGS = ("--heartbeat", "0.5", "--heartbeat-timeout", "1.5")


class Restartable:
    """A verifyd on a fixed loopback port that can be killed and started again."""

    def __init__(self, target: Path, logs: Path):
        self.target, self.logs, self.port = target, logs, free_port()
        self.starts = 0
        self.proc: DaemonProcess = self.start()

    def start(self) -> DaemonProcess:
        self.starts += 1
        self.proc = start_daemon(self.target, self.logs / f"verifyd-{self.starts}.log",
                                 *DAEMON_FLAGS, threads=1, port=self.port)
        return self.proc

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


@pytest.fixture
def restartable(target_dir: Path, tmp_path: Path) -> Iterator[Restartable]:
    d = Restartable(target_dir, tmp_path)
    yield d
    d.proc.stop()


def make_client(endpoint: str, draft_gguf: Path, reconnect_for_s: float = 120.0) -> EdgeClient:
    return EdgeClient(ClientConfig(server=endpoint, draft_path=str(draft_gguf), threads=1,
                                   heartbeat_s=HEARTBEAT_S, connect_timeout_s=3.0,
                                   reconnect_for_s=reconnect_for_s))


def test_kill9_mid_answer_and_restart_twice_keeps_every_token(restartable, draft_gguf,
                                                              check_exact):
    client = make_client(restartable.endpoint, draft_gguf)
    tokens = client.chat_tokens([{"role": "user", "content": CHAT_PROMPTS[2]}])
    prompt = list(tokens)
    stats = GenerationStats()
    kills = iter((24, 72))  # generated-token counts after which the daemon dies
    next_kill: int | None = next(kills)
    killers: list[threading.Thread] = []

    def kill_and_restart() -> None:
        restartable.proc.kill()
        restartable.start()

    try:
        for _ in client.generate(new_session_id(), tokens, 128, stats):
            if next_kill is not None and len(tokens) - len(prompt) >= next_kill:
                # in a thread, so the kill lands while the next round is in flight
                killers.append(threading.Thread(target=kill_and_restart))
                killers[-1].start()
                next_kill = next(kills, None)
        for k in killers:
            k.join()
    finally:
        client.close()
    assert restartable.starts == 3
    assert stats.reconnects >= 2
    check_exact(prompt, tokens[len(prompt):], 128)


def test_stalled_daemon_is_noticed_within_the_heartbeat_timeout_and_recovered(
        restartable, draft_gguf, check_exact):
    client = make_client(restartable.endpoint, draft_gguf)
    notes: list[tuple[float, str]] = []
    tokens = client.chat_tokens([{"role": "user", "content": CHAT_PROMPTS[4]}])
    prompt = list(tokens)
    stats = GenerationStats()
    stopped_at: list[float] = []

    def stall() -> None:
        restartable.proc.process.send_signal(signal.SIGSTOP)
        stopped_at.append(time.monotonic())
        time.sleep(4.0)
        restartable.proc.process.send_signal(signal.SIGCONT)

    staller = threading.Thread(target=stall)
    try:
        rounds = client.generate(new_session_id(), tokens, 96, stats,
                                 on_wait=lambda m: notes.append((time.monotonic(), m)))
        for _ in rounds:
            if not staller.is_alive() and not stopped_at and len(tokens) - len(prompt) >= 16:
                staller.start()
        staller.join()
    finally:
        client.close()
    reports = [t for t, m in notes if m.startswith("reconnecting")]
    assert stopped_at and reports, notes
    # noticed within the heartbeat timeout (1.5 s), plus slack for a busy 2-core machine
    assert reports[0] - stopped_at[0] < 3 * HEARTBEAT_S + 2.0, notes[:3]
    assert stats.reconnects >= 1
    check_exact(prompt, tokens[len(prompt):], 96)


def test_daemon_that_never_comes_back_gives_up_clearly_then_retry_continues(
        restartable, draft_gguf, check_exact):
    client = make_client(restartable.endpoint, draft_gguf, reconnect_for_s=4.0)
    tokens = client.chat_tokens([{"role": "user", "content": CHAT_PROMPTS[0]}])
    prompt = list(tokens)
    stats = GenerationStats()
    try:
        rounds = client.generate(new_session_id(), tokens, 64, stats)
        with pytest.raises(DaemonUnavailable, match=r"unreachable.*conversation is kept"):
            for _ in rounds:
                if len(tokens) - len(prompt) >= 16 and restartable.proc.process.poll() is None:
                    restartable.proc.kill()
                    killed_at = time.monotonic()
        assert time.monotonic() - killed_at < 4.0 + 3.0 + 5.0  # gave up, did not hang
        kept = len(tokens) - len(prompt)
        assert kept >= 16  # the verified part of the answer is still ours
        # /retry: the daemon is back on its port; the same session continues from `tokens`
        restartable.start()
        for _ in client.generate(new_session_id(), tokens, 64 - kept, GenerationStats()):
            pass
    finally:
        client.close()
    check_exact(prompt, tokens[len(prompt):], 64)


def test_chat_says_unreachable_keeps_the_conversation_and_retry_finishes(restartable):
    import os
    import subprocess
    import sys

    chat = subprocess.Popen(
        [sys.executable, "-m", "edgespec.edge_client.cli", "chat", "--server",
         restartable.endpoint, "--max-tokens", "24", "--threads", "1", "--heartbeat", "0.5",
         "--connect-timeout", "2", "--reconnect-for", "3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"})
    assert chat.stdin is not None and chat.stdout is not None
    try:
        assert "edgespec" in chat.stdout.readline()  # connected, banner shown
        restartable.proc.kill()
        chat.stdin.write("Name three colours.\n")
        chat.stdin.flush()
        seen = ""
        deadline = time.monotonic() + 60
        while not ("unreachable" in seen and "/retry" in seen) and time.monotonic() < deadline:
            seen += chat.stdout.readline()
        assert "unreachable" in seen and "/retry" in seen, seen
        restartable.start()
        out, err = chat.communicate("/retry\n/quit\n", timeout=120)
    finally:
        if chat.poll() is None:
            chat.kill()
    assert chat.returncode == 0, err
    answer = out.split("bot>")[-1]
    assert "error" not in answer and "unreachable" not in answer
    assert len(answer.split("acceptance")[0].strip()) > 10, out  # the answer was finished
