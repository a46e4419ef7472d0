"""``verifyd --metrics-port`` scraped by a real Prometheus (Debian's ``prometheus``, started
here on loopback with a generated config): what it stores equals what the clients counted."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import zmq
from edgespec.tools.daemon_proc import DaemonProcess, free_port, start_daemon
from edgespec.tools.serve_proc import start_serve
from edgespec.wire.codec import Hello, encode

pytestmark = pytest.mark.slow
THREADS = int(os.environ.get("EDGESPEC_TEST_THREADS", "1"))
PROMPTS = ["Write a haiku about the ocean.", "Why do we have seasons on Earth?"]


@pytest.fixture(scope="module")
def metered(target_dir, tmp_path_factory) -> Iterator[tuple[DaemonProcess, str]]:
    """A daemon of its own (its counters start at zero) with metrics on any free port."""
    log = tmp_path_factory.mktemp("verifyd-metrics") / "verifyd.log"
    daemon = start_daemon(target_dir, log, "--metrics-port", "0", threads=THREADS)
    port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
    assert port, log.read_text()
    yield daemon, f"127.0.0.1:{port.group(1)}"
    daemon.stop()


@pytest.fixture
def prometheus(tmp_path, metered) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs Debian's prometheus (tools/_system_deps.sh installs it when "
                    "apt-get can run as root)")
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "verifyd",
                            "static_configs": [{"targets": [metered[1]]}]}]}))
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address={address}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{address}"
    try:
        wait_for(lambda: requests.get(f"{url}/-/ready", timeout=2).status_code == 200, 60,
                 "prometheus did not become ready")
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def wait_for(check: Any, seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, why
        time.sleep(0.25)


def query(prometheus: str, promql: str) -> float | None:
    """The single value of an instant PromQL query (None: no series yet)."""
    reply = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    result = reply.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_counts_equal_the_clients_own_stats(metered, prometheus, tmp_path):
    daemon, _ = metered
    # client 1: edgespec generate, one session per prompt, each with its own stats
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("\n".join(json.dumps({"id": i, "prompt": p, "max_tokens": 32})
                                     for i, p in enumerate(PROMPTS)))
    done = subprocess.run(
        [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
         daemon.endpoint, "--threads", str(THREADS), "--prompt-file", str(prompt_file),
         "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stats = [json.loads(line)["stats"] for line in done.stdout.splitlines()]
    # client 2: edgespec serve, reporting its figures in the response's metrics field
    served = start_serve(daemon.endpoint, tmp_path / "serve.log", threads=THREADS)
    try:
        api = openai.OpenAI(base_url=f"{served.url}v1", api_key="unused", max_retries=0)
        reply = api.chat.completions.create(
            model=api.models.list().data[0].id, max_tokens=32, temperature=0,
            messages=[{"role": "user", "content": "Give me a short recipe for pancakes."}])
        spec = (reply.model_extra or {})["metrics"]["speculative_decoding"]
        drafted = sum(s["drafted"] for s in stats) + spec["num_draft_tokens"]
        accepted = sum(s["accepted"] for s in stats) + spec["num_accepted_tokens"]
        rounds = sum(s["rounds"] for s in stats) + spec["num_drafts"]
        assert accepted > 0

        answered_at = time.time()

        def scraped(promql: str, want: float) -> bool:
            return query(prometheus, promql) == want

        # read a scrape taken after the last reply: one taken before it can already hold
        # every accepted token and still miss the final round (a round of 0 drafts adds none)
        wait_for(lambda: (query(prometheus, 'timestamp(up{job="verifyd"})') or 0)
                 > answered_at, 30, "prometheus took no scrape after the answers")
        assert query(prometheus, "spec_decode_num_accepted_tokens_total") == accepted
        assert query(prometheus, "spec_decode_num_draft_tokens_total") == drafted
        assert query(prometheus, "verifyd_rounds_total") == rounds
        assert query(prometheus, "sum(spec_decode_num_accepted_tokens_per_pos_total)") \
            == accepted
        assert query(prometheus, "sum(spec_decode_num_draft_tokens_per_pos_total)") == drafted
        assert query(prometheus, 'up{job="verifyd"}') == 1
        assert (query(prometheus, "verifyd_step_seconds_count") or 0) > 0
        assert query(prometheus, "verifyd_kv_blocks_total") == pytest.approx(2048)
        wait_for(lambda: scraped("verifyd_sessions_active", 0), 10, "sessions left open")
        # refusals by code: a frame that is no message, a HELLO from another tokenizer
        stranger: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(daemon.endpoint)
        stranger.send_multipart([b"not a message"])
        stranger.send_multipart(encode(Hello(b"\x00" * 32), 0, 1))
        for _ in range(2):
            assert stranger.poll(10_000), "no reply to a refused request"
            stranger.recv_multipart()
        stranger.close(0)
        wait_for(lambda: scraped('verifyd_errors_total{code="MALFORMED"}', 1)
                 and scraped('verifyd_errors_total{code="MODEL_MISMATCH"}', 1)
                 and scraped('verifyd_hellos_refused_total{reason="tokenizer"}', 1), 15,
                 "refusals were not counted by code")
        # a client that leaves mid-answer frees its session on the daemon
        story = api.chat.completions.create(
            model=api.models.list().data[0].id, max_tokens=400, temperature=0, stream=True,
            messages=[{"role": "user", "content": "Tell me a long story about a dragon."}])
        next(iter(story))
        wait_for(lambda: scraped("verifyd_sessions_active", 1), 15, "no session opened")
        story.close()
        wait_for(lambda: scraped("verifyd_sessions_active", 0), 20,
                 "the departed client's session was not freed")
    finally:
        served.stop()


def test_grafana_dashboard_plots_metrics_verifyd_exports(metered):
    dashboard = Path(__file__).parents[2] / "tools" / "grafana" / "verifyd.json"
    panels = json.loads(dashboard.read_text())["panels"]
    exported = requests.get(f"http://{metered[1]}/metrics", timeout=5).text
    names = set(re.findall(r"^([a-z_:]+)[{ ]", exported, re.M))
    # a labelled family with no children yet (no rounds scraped) still declares its TYPE
    for family, kind in re.findall(r"^# TYPE ([a-z_:]+) (\w+)", exported, re.M):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names |= {family, *(family + s for s in suffixes.get(kind, ()))}
    for panel in panels:
        for target in panel.get("targets", []):
            used = re.findall(r"\b((?:spec_decode|verifyd)_[a-z_]+)", target["expr"])
            assert used and set(used) <= names, (panel["title"], used)
