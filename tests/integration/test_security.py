"""CURVE on a real verifyd: strangers are refused while an authorised client keeps
generating exact tokens, the bytes on the wire carry neither prompt text nor token ids,
and a plain daemon will not listen beyond loopback unless told to, loudly."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from edgespec.edge_client.transport import Link, expect, new_session_id
from edgespec.tools.daemon_proc import DaemonProcess, start_daemon
from edgespec.tools.prompts import CHAT_PROMPTS
from edgespec.wire import curve
from edgespec.wire.codec import Draft, Open, Opened, Verdict
from edgespec.wire.errors import AuthFailed, UnknownSession

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "edgespec.edge_client.cli"]
VERIFYD = [sys.executable, "-m", "edgespec.verify_daemon.cli"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    curve.keygen(root / "server")
    curve.keygen(root / "alice", "alice")
    curve.keygen(root / "mallory", "mallory")
    curve.keygen(root / "bob", "bob")
    (root / "allow").mkdir()
    shutil.copy(root / "alice" / "alice.key", root / "allow")
    shutil.copy(root / "bob" / "bob.key", root / "allow")
    return root


@pytest.fixture(scope="module")
def curve_daemon(target_dir: Path, keys: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    log = tmp_path_factory.mktemp("verifyd-curve") / "verifyd.log"
    d = start_daemon(target_dir, log, "--keys", str(keys / "server"), "--allow",
                     str(keys / "allow"), threads=1)
    yield d
    d.stop()


def generate(endpoint: str, prompt: str, max_tokens: int, *extra: str) -> subprocess.Popen:
    prompt_file = Path(f"/tmp/edgespec-sec-{threading.get_ident()}.jsonl")
    prompt_file.write_text(json.dumps({"id": "p", "prompt": prompt}))
    return subprocess.Popen(
        [*CLI, "generate", "--server", endpoint, "--prompt-file", str(prompt_file), "--json",
         "--max-tokens", str(max_tokens), "--threads", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    result = json.loads(out.splitlines()[0])
    assert "error" not in result, result
    return result


def test_strangers_are_refused_while_an_authorised_client_stays_exact(curve_daemon, keys,
                                                                       check_exact):
    server_key = str(keys / "server" / "server.key")
    good = generate(curve_daemon.endpoint, CHAT_PROMPTS[1], 96, "--server-key", server_key,
                    "--client-key", str(keys / "alice" / "alice.key_secret"))
    wrong_key = zmq_public_key()
    attempts = [
        (None, None, "requires CurveZMQ"),  # a plain client
        (wrong_key, str(keys / "alice" / "alice.key_secret"), "wrong --server-key"),
        (server_key, str(keys / "mallory" / "mallory.key_secret"), "allow-list"),
    ]
    refusals = 0
    while good.poll() is None or refusals < len(attempts):
        server, client_key, reason = attempts[refusals % len(attempts)]
        cc = curve.CurveClient.create(server, client_key) if server else None
        link = Link(curve_daemon.endpoint, timeout_s=10.0, curve=cc)
        try:
            with pytest.raises(AuthFailed, match=reason):
                link.hello(b"\0" * 32)
        finally:
            link.close()
        refusals += 1
    result = finished(good)
    assert refusals >= len(attempts)
    check_exact(result["prompt_token_ids"], result["token_ids"], 96)


def test_cli_names_the_reason_for_a_refusal(curve_daemon, keys):
    done = subprocess.run([*CLI, "generate", "--server", curve_daemon.endpoint, "--prompt",
                           "hi", "--threads", "1", "--server-key",
                           str(keys / "server" / "server.key")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "allow-list" in done.stderr  # a fresh key per run is not on alice's list


def zmq_public_key() -> str:
    import zmq

    return zmq.curve_keypair()[0].decode()


class RecordingRelay:
    """A TCP relay on loopback that forwards both ways and keeps every byte it saw."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.recorded = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.recorded += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.listener.close()


def leaks(recorded: bytes, prompt: str, prompt_ids: list[int]) -> list[str]:
    """What of the prompt can be read in ``recorded``: its words, or runs of its token ids."""
    found = [w for w in prompt.split() if len(w) >= 5 and w.encode() in recorded]
    ids = np.asarray(prompt_ids, dtype="<i4")
    found += [f"ids[{i}:{i + 3}]" for i in range(len(ids) - 2)
              if ids[i:i + 3].tobytes() in recorded]
    return found


@pytest.mark.parametrize("encrypted", [True, False], ids=["curve", "plain-control"])
def test_nothing_of_the_prompt_is_on_the_wire_with_curve(encrypted, curve_daemon, daemon, keys,
                                                          check_exact):
    prompt = CHAT_PROMPTS[2]
    relay = RecordingRelay(curve_daemon.endpoint if encrypted else daemon.endpoint)
    extra = ["--server-key", str(keys / "server" / "server.key"), "--client-key",
             str(keys / "alice" / "alice.key_secret")] if encrypted else []
    try:
        result = finished(generate(relay.endpoint, prompt, 32, *extra))
    finally:
        relay.close()
    seen = leaks(bytes(relay.recorded), prompt + " " + result["text"],
                 result["prompt_token_ids"] + result["token_ids"])
    assert len(relay.recorded) > 1000
    if encrypted:
        assert seen == [], seen
        check_exact(result["prompt_token_ids"], result["token_ids"], 32)
    else:  # the control: the same check does find the prompt on a plain link
        assert any(s.startswith("ids[") for s in seen)


def test_plain_daemon_refuses_a_public_address_unless_insecure():
    done = subprocess.run([*VERIFYD, "--bind", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to serve 0.0.0.0 without encryption" in done.stderr
    done = subprocess.run([*VERIFYD, "--bind", "0.0.0.0", "--insecure", "--prepare"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "UNENCRYPTED and UNAUTHENTICATED" in done.stderr


def test_replay_drives_a_curve_daemon_with_an_allow_listed_key(curve_daemon, keys, tmp_path):
    trace = tmp_path / "t.jsonl"
    done = subprocess.run(
        [*CLI, "generate", "--server", curve_daemon.endpoint, "--prompt", CHAT_PROMPTS[0],
         "--max-tokens", "24", "--threads", "1", "--trace", str(trace), "--server-key",
         str(keys / "server" / "server.key"), "--client-key",
         str(keys / "alice" / "alice.key_secret")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    replay = [sys.executable, "-m", "edgespec.tools.replay", "run", str(trace), "--server",
              curve_daemon.endpoint, "--pace", "fast", "--json", "--timeout", "30",
              "--server-key", str(keys / "server" / "server.key")]
    good = subprocess.run([*replay, "--client-key", str(keys / "alice" / "alice.key_secret")],
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    result = json.loads(good.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["diverged_rounds"] == 0 and result["rounds"] > 0
    stranger = subprocess.run([*replay, "--client-key",
                               str(keys / "mallory" / "mallory.key_secret")],
                              capture_output=True, text=True, timeout=300)
    assert json.loads(stranger.stdout.strip().splitlines()[-1])["errors"]  # refused


def test_a_session_is_bound_to_the_client_key_that_opened_it(curve_daemon, keys):
    """Another allow-listed user who learns a session id can neither take it over nor use it."""
    server_key = str(keys / "server" / "server.key")

    def link(name: str) -> Link:
        secret = str(keys / name / f"{name}.key_secret")
        return Link(curve_daemon.endpoint, timeout_s=30.0,
                    curve=curve.CurveClient.create(server_key, secret))

    alice, bob = link("alice"), link("bob")
    sid = new_session_id()
    try:
        expect(alice.request(Open([1, 2, 3, 4], 8), sid), Opened)
        with pytest.raises(AuthFailed, match="another client key"):
            bob.request(Open([5, 6, 7], 8), sid, recover=False)
        with pytest.raises(UnknownSession):
            bob.request(Draft(4, []), sid, recover=False)
        verdict = expect(alice.request(Draft(4, []), sid), Verdict)
        assert verdict.new_length == 5  # alice's session, untouched by bob's attempts
    finally:
        alice.close()
        bob.close()
