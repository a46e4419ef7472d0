"""No thread flags on one machine: verifyd takes its share, the client the rest, both say so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.stats import GenerationStats
from edgespec.models.cpu import client_threads, daemon_threads
from edgespec.tools.daemon_proc import start_daemon

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def auto_daemon(target_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    d = start_daemon(target_dir, tmp_path_factory.mktemp("auto") / "verifyd.log", threads=0)
    yield d
    d.stop()


def test_loopback_daemon_and_client_split_the_cores(auto_daemon, draft_gguf, check_exact):
    want_daemon = daemon_threads(0, bound_to_loopback=True)
    assert f"verifyd: {want_daemon} CPU threads (auto: loopback" in auto_daemon.log.read_text()
    client = EdgeClient(ClientConfig(server=auto_daemon.endpoint, draft_path=str(draft_gguf)))
    try:
        assert client.welcome.threads == want_daemon
        assert client.threads.reason == "same machine"
        assert client.drafter.n_threads == client_threads(None, True, want_daemon)
        prompt = client.chat_tokens([{"role": "user", "content": "Name three colours."}])
        tokens, stats, sid = list(prompt), GenerationStats(), new_session_id()
        for _ in client.generate(sid, tokens, 24, stats):
            pass
        client.end_session(sid)
        check_exact(prompt, tokens[len(prompt):], 24)
        d = stats.as_dict()
        assert (d["draft_threads"], d["daemon_threads"], d["thread_split"]) == (
            client.drafter.n_threads, want_daemon, "same machine")
        # between rounds the draft also takes the daemon's cores (up to all of them)
        cores = client.drafter.n_threads + want_daemon
        assert d["idle_draft_threads"] == client.drafter.idle_threads == min(
            cores, len(os.sched_getaffinity(0)))
    finally:
        client.close()


def test_explicit_client_threads_win(auto_daemon, draft_gguf):
    client = EdgeClient(ClientConfig(server=auto_daemon.endpoint, draft_path=str(draft_gguf),
                                     threads=3))
    try:
        assert (client.threads.reason, client.drafter.n_threads) == ("explicit", 3)
        assert client.drafter.idle_threads == 3  # and are not widened between rounds
    finally:
        client.close()
