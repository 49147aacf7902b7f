"""Endpoint locality and ZeroMQ CURVE security.

Rule (docs/design.md): a TCP endpoint that leaves localhost must use CURVE authentication and
encryption. :func:`check_endpoint` enforces it for every socket the transport opens.

Keys are ZeroMQ certificate files written by ``zmq.auth.create_certificates`` (text, Z85): a
``NAME.key`` file holds the public key, ``NAME.key_secret`` the public and secret key. A server
admits only clients whose public key file lies in its ``authorized_clients_dir`` (ZAP handler,
``zmq.auth.thread.ThreadAuthenticator``); all others are refused during the handshake.
Source: ZeroMQ RFC 26 (CurveZMQ) and RFC 27 (ZAP), pyzmq ``zmq.auth`` docs.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class SecurityError(RobotStackError, RuntimeError):
    """An endpoint would leave localhost without CURVE, or key material is missing/invalid."""


def endpoint_host(endpoint: str) -> str | None:
    """Host part of a ``tcp://host:port`` endpoint, or None for ipc/inproc endpoints.

    Raises:
        ValueError: for an unsupported transport or malformed endpoint.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return None
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"unsupported endpoint {endpoint!r}: use ipc://PATH or tcp://HOST:PORT")
    parts = urlsplit(endpoint)
    host = parts.hostname
    if host is None:
        raise ValueError(f"malformed tcp endpoint {endpoint!r}: expected tcp://HOST:PORT")
    return host


def is_local_endpoint(endpoint: str) -> bool:
    """True if traffic on ``endpoint`` cannot leave this host (ipc, inproc, loopback TCP).

    ``tcp://*:port`` and ``tcp://0.0.0.0:port`` listen on every interface and so are not local.
    """
    host = endpoint_host(endpoint)
    if host is None:
        return True
    if host == "localhost":
        return True
    if host in ("*", ""):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost


@dataclass(frozen=True)
class CurveServer:
    """Server-side CURVE settings.

    Attributes:
        secret_file: the server's ``NAME.key_secret`` certificate.
        authorized_clients_dir: folder of client public ``*.key`` files allowed to connect.
    """

    secret_file: Path
    authorized_clients_dir: Path


@dataclass(frozen=True)
class CurveClient:
    """Client-side CURVE settings.

    Attributes:
        secret_file: the client's ``NAME.key_secret`` certificate.
        server_public_file: the server's public ``NAME.key`` certificate.
    """

    secret_file: Path
    server_public_file: Path


def check_endpoint(endpoint: str, curve: CurveServer | CurveClient | None) -> None:
    """Refuse a non-local TCP endpoint without CURVE.

    Raises:
        SecurityError: if ``endpoint`` leaves localhost and ``curve`` is None.
        ValueError: for malformed endpoints.
    """
    if curve is None and not is_local_endpoint(endpoint):
        raise SecurityError(
            f"endpoint {endpoint} leaves localhost; configure CURVE keys for it "
            "(robot-stack keys generate DIR) or use a loopback/ipc endpoint"
        )


def _load(path: Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise SecurityError(f"CURVE key file {path} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except Exception as e:  # malformed certificate
        raise SecurityError(f"CURVE key file {path} is not a valid certificate: {e}") from None
    if want_secret and not secret:
        raise SecurityError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


_authenticators: dict[int, ThreadAuthenticator] = {}


def apply_server(sock: zmq.Socket, curve: CurveServer) -> None:
    """Make ``sock`` a CURVE server admitting only authorized clients (call before bind)."""
    public, secret = _load(curve.secret_file, want_secret=True)
    clients = Path(curve.authorized_clients_dir)
    if not clients.is_dir() or not any(clients.glob("*.key")):
        raise SecurityError(f"no authorized client keys (*.key) in {clients}")
    ctx = sock.context
    auth = _authenticators.get(id(ctx))
    if auth is None:
        auth = ThreadAuthenticator(ctx)
        auth.start()
        _authenticators[id(ctx)] = auth
    auth.configure_curve(domain="*", location=str(clients))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def apply_client(sock: zmq.Socket, curve: CurveClient) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is given (call before connect)."""
    public, secret = _load(curve.secret_file, want_secret=True)
    server_public, _ = _load(curve.server_public_file, want_secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def stop_authenticators() -> None:
    """Stop ZAP threads (at process shutdown)."""
    for auth in _authenticators.values():
        auth.stop()
    _authenticators.clear()


def generate_keys(directory: str | os.PathLike, names: tuple[str, ...] = ("server", "client")) -> dict[str, Path]:
    """Write CURVE certificates ``NAME.key`` / ``NAME.key_secret`` for each name into ``directory``.

    Client public keys are also copied into ``directory/authorized_clients/`` so a server can use
    that folder directly. Returns name -> secret file path.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    auth_dir = d / "authorized_clients"
    auth_dir.mkdir(exist_ok=True)
    out = {}
    for name in names:
        public_file, secret_file = zmq.auth.create_certificates(str(d), name)
        os.chmod(secret_file, 0o600)
        out[name] = Path(secret_file)
        if name != "server":
            (auth_dir / Path(public_file).name).write_bytes(Path(public_file).read_bytes())
    return out
