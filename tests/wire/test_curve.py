"""CurveZMQ set-up with real sockets over loopback (no model): keys, the authenticator's
order, the allow-list and its reload, and the client's reasons for a refused handshake."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import zmq
from edgespec.edge_client.transport import Link, Liveness
from edgespec.wire import curve
from edgespec.wire.codec import Welcome, decode, encode
from edgespec.wire.errors import AuthFailed
from zmq.auth.thread import ThreadAuthenticator

FP = b"f" * 32


def test_keygen_makes_a_private_secret_and_refuses_to_overwrite(tmp_path):
    public, secret = curve.keygen(tmp_path / "keys")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o077 == 0o044
    assert len(curve.load_public_key(str(public))) == curve.KEY_LENGTH
    assert curve.load_keypair(secret).public == curve.load_public_key(str(public))
    with pytest.raises(curve.BadKey, match="already exists"):
        curve.keygen(tmp_path / "keys")


def test_bad_keys_are_clear_errors(tmp_path):
    _, secret = curve.keygen(tmp_path)
    with pytest.raises(curve.BadKey, match="neither a key file"):
        curve.load_public_key("not-a-key")
    with pytest.raises(curve.BadKey, match="Z85"):
        curve.load_public_key("~" * 40)
    os.chmod(secret, 0o644)
    with pytest.raises(curve.BadKey, match="readable by others"):
        curve.load_keypair(secret)
    with pytest.raises(curve.BadKey, match="no key file"):
        curve.load_keypair(tmp_path / "missing.key_secret")


def test_bind_refuses_without_a_running_authenticator(tmp_path):
    curve.keygen(tmp_path)
    context = zmq.Context()
    auth = ThreadAuthenticator(context)  # never started: CURVE would admit anyone
    server = curve.CurveServer(curve.load_keypair(tmp_path / "server.key_secret"), auth, None)
    sock = context.socket(zmq.ROUTER)
    try:
        with pytest.raises(RuntimeError, match="authenticator"):
            curve.bind_curve(sock, "tcp://127.0.0.1:0", server)
    finally:
        sock.close(0)
        context.term()


class EchoServer:
    """A CURVE ROUTER answering HELLO with WELCOME, set up exactly as verifyd's."""

    def __init__(self, keys: Path, allow: Path | None):
        self.context = zmq.Context()
        self.curve = curve.start_curve_server(self.context, keys, allow)
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        curve.bind_curve(self.socket, "tcp://127.0.0.1:0", self.curve)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.answer, daemon=True)
        self.thread.start()

    def answer(self) -> int:
        served = 0
        while not self.done.is_set():
            if self.socket.poll(20):
                peer, *body = self.socket.recv_multipart()
                env = decode(body)
                welcome = Welcome(FP, 10, 4, 64, "echo", (0,), "")
                self.socket.send_multipart([peer, *encode(welcome, env.session, env.seq,
                                                          env.epoch)])
                served += 1
        return served

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self.socket.close(0)
        self.curve.stop()
        self.context.term()


@pytest.fixture
def keys(tmp_path):
    curve.keygen(tmp_path / "server")
    curve.keygen(tmp_path / "alice-home", "alice")
    curve.keygen(tmp_path / "others", "bob")
    (tmp_path / "allow").mkdir()  # the operator holds only public halves
    shutil.copy(tmp_path / "alice-home" / "alice.key", tmp_path / "allow" / "alice.key")
    return tmp_path


def hello_from(endpoint: str, server_key: str | None, client_key: Path | None) -> Welcome:
    cc = curve.CurveClient.create(server_key, str(client_key) if client_key else None) \
        if server_key else None
    # 20 s: a loaded CI box once took over 5 s to complete an admitted handshake
    link = Link(endpoint, timeout_s=20.0, curve=cc, liveness=Liveness(connect_timeout_s=20.0))
    try:
        return link.hello(FP)
    finally:
        link.close()


def test_allow_list_admits_only_listed_keys_and_reloads_without_restart(keys, tmp_path):
    server = EchoServer(keys / "server", keys / "allow")
    server_key = str(keys / "server" / "server.key")
    try:
        assert isinstance(hello_from(server.endpoint, server_key,
                                     keys / "alice-home" / "alice.key_secret"), Welcome)
        with pytest.raises(AuthFailed, match="allow-list"):
            hello_from(server.endpoint, server_key, keys / "others" / "bob.key_secret")
        shutil.copy(keys / "others" / "bob.key", keys / "allow" / "bob.key")  # no restart
        assert isinstance(hello_from(server.endpoint, server_key,
                                     keys / "others" / "bob.key_secret"), Welcome)
        os.remove(keys / "allow" / "bob.key")
        with pytest.raises(AuthFailed, match="allow-list"):
            hello_from(server.endpoint, server_key, keys / "others" / "bob.key_secret")
        with pytest.raises(AuthFailed, match="requires CurveZMQ"):
            hello_from(server.endpoint, None, None)
        wrong = zmq.curve_keypair()[0].decode()
        with pytest.raises(AuthFailed, match="wrong --server-key"):
            hello_from(server.endpoint, wrong, keys / "alice-home" / "alice.key_secret")
    finally:
        server.close()


def test_without_allow_list_any_client_knowing_the_server_key_is_admitted(keys):
    server = EchoServer(keys / "server", None)
    try:
        welcome = hello_from(server.endpoint, str(keys / "server" / "server.key"), None)
        assert welcome.model_name == "echo"
    finally:
        server.close()
