"""CurveZMQ keys and the daemon's authenticator, as in pyzmq's ``examples/security/ironhouse.py``.

Keys live in ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret`` secret, mode
0600). CURVE fails open: a server socket whose Context runs no ZAP handler admits anyone who
knows the server key, so ``bind_curve`` refuses to bind unless the authenticator is running
in the socket's own Context. The authenticator runs in its own thread (``ThreadAuthenticator``),
so handshakes never wait for a forward pass on the model's thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

KEY_LENGTH = 40  # a Z85-encoded 32-byte Curve25519 key
SERVER_NAME = "server"


class BadKey(ValueError):
    """A key file or Z85 string that cannot be used."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # Z85, 40 bytes
    secret: bytes


def keygen(directory: Path | str, name: str = SERVER_NAME) -> tuple[Path, Path]:
    """Create ``NAME.key`` and ``NAME.key_secret`` in ``directory``; the secret 0600 from birth."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise BadKey(f"{public} or {secret} already exists; refusing to overwrite a key")
    old_mask = os.umask(0o077)  # no window in which another user can read the secret
    try:
        zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old_mask)
    public.chmod(0o644)
    return public, secret


def load_keypair(path: Path | str) -> KeyPair:
    """A secret certificate file (``*.key_secret``) as a key pair, refusing loose permissions."""
    file = Path(path)
    if not file.is_file():
        raise BadKey(f"no key file at {file}")
    if file.stat().st_mode & 0o077:
        raise BadKey(f"{file} is readable by others: chmod 600 {file}")
    try:
        public, secret = zmq.auth.load_certificate(file)
    except (OSError, ValueError) as exc:
        raise BadKey(f"{file} is not a ZeroMQ certificate: {exc}") from exc
    if not secret:
        raise BadKey(f"{file} holds no secret key (use the .key_secret file)")
    return KeyPair(public, secret)


def load_public_key(key: str) -> bytes:
    """The server's public key from a certificate file or a 40-character Z85 string."""
    if os.path.exists(key):
        try:
            public, _ = zmq.auth.load_certificate(key)
        except (OSError, ValueError) as exc:
            raise BadKey(f"{key} is not a ZeroMQ certificate: {exc}") from exc
        return public
    raw = key.strip().encode()
    if len(raw) != KEY_LENGTH:
        raise BadKey(f"server key {key!r} is neither a key file nor a 40-character Z85 key")
    try:
        zmq.utils.z85.decode(raw)
    except (ValueError, KeyError) as exc:
        raise BadKey(f"server key {key!r} is not valid Z85") from exc
    return raw


# ---------------------------------------------------------------- daemon side


class AllowList:
    """Client keys allowed in, reloaded when the directory changes (checked per handshake,
    on the authenticator's thread), so the operator adds or removes a key without a restart."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise BadKey(f"allow-list {self.directory} is not a directory")
        self._signature: tuple[tuple[str, int], ...] = ()
        self._keys: set[bytes] = set()
        self.refused = 0  # handshakes from keys not on the list (verifyd --metrics-port)
        self._reload_if_changed()

    def _reload_if_changed(self) -> None:
        with os.scandir(self.directory) as entries:
            signature = tuple(sorted((e.name, e.stat().st_mtime_ns) for e in entries
                                     if e.name.endswith(".key") and e.is_file()))
        if signature != self._signature:
            self._keys = set(zmq.auth.load_certificates(self.directory))
            self._signature = signature

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this Z85 client key allowed?"""
        self._reload_if_changed()
        allowed = key in self._keys
        self.refused += not allowed
        return allowed


@dataclass
class CurveServer:
    """The daemon's CURVE setup: its key pair and a running authenticator."""

    keys: KeyPair
    authenticator: ThreadAuthenticator
    allow: AllowList | None

    def stop(self) -> None:
        self.authenticator.stop()


def start_curve_server(context: zmq.Context, keys_dir: Path | str,
                       allow_dir: Path | str | None = None) -> CurveServer:
    """Load ``keys_dir/server.key_secret`` and start the authenticator in ``context``."""
    keys = load_keypair(Path(keys_dir) / f"{SERVER_NAME}.key_secret")
    allow = AllowList(allow_dir) if allow_dir is not None else None
    auth = ThreadAuthenticator(context)
    auth.start()
    if allow is None:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        auth.configure_curve_callback(domain="*", credentials_provider=allow)
    return CurveServer(keys, auth, allow)


def bind_curve(socket: zmq.Socket, endpoint: str, server: CurveServer) -> None:
    """Make ``socket`` a CURVE server and bind it, only once the ZAP handler is running."""
    if not server.authenticator.is_alive() or server.authenticator.context != socket.context:
        raise RuntimeError("CURVE without a running authenticator in the socket's Context "
                           "admits anyone who knows the server key; start it before bind")
    socket.curve_secretkey = server.keys.secret
    socket.curve_publickey = server.keys.public
    socket.curve_server = True
    socket.bind(endpoint)


# ---------------------------------------------------------------- client side


@dataclass(frozen=True, slots=True)
class CurveClient:
    """What a client needs: the server's public key and its own pair (ephemeral if not given)."""

    server_key: bytes
    keys: KeyPair

    @classmethod
    def create(cls, server_key: str, client_key_file: str | None = None) -> CurveClient:
        if client_key_file:
            keys = load_keypair(client_key_file)
        else:
            public, secret = zmq.curve_keypair()
            keys = KeyPair(public, secret)
        return cls(load_public_key(server_key), keys)

    @classmethod
    def from_options(cls, server_key: str | None, client_key_file: str | None
                     ) -> CurveClient | None:
        """The ``--server-key`` / ``--client-key`` pair of a command: CURVE when a server key
        is given, plain without (``ValueError`` for a client key alone, ``BadKey`` for an
        unusable key)."""
        if server_key is None:
            if client_key_file is not None:
                raise ValueError("--client-key needs --server-key")
            return None
        return cls.create(server_key, client_key_file)

    def apply(self, socket: zmq.Socket) -> None:
        """Set before ``connect``: the handshake uses what is set at connect time."""
        socket.curve_serverkey = self.server_key
        socket.curve_publickey = self.keys.public
        socket.curve_secretkey = self.keys.secret
