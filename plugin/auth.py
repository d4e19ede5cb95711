"""Who may talk to an engine, and who may stop it.

- ipc:// sockets live in a 0700 per-user directory: only the owner's processes reach them.
- Loopback TCP is reachable by every local user: anyone may generate, but Shutdown and Flush need the
  owner token, a random secret the engine writes into the owner's 0700 runtime directory.
- Any other TCP address needs CurveZMQ: the engine encrypts and admits only clients whose public key
  is in its keys directory; binding without keys is refused. Authenticated clients may do anything.

A keys directory (`create_keys`) holds `server.key` / `server.key_secret`, `client.key` /
`client.key_secret`, and `clients/`, the public keys the engine admits.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import shutil
from pathlib import Path

import zmq
import zmq.auth

from .endpoint import runtime_dir


def is_loopback(endpoint: str) -> bool:
    """True for tcp://127.x.x.x, tcp://[::1] and tcp://localhost endpoints."""
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface ("*", "eth0"): may be reachable from elsewhere


def needs_curve(endpoint: str) -> bool:
    """Whether binding `endpoint` without CurveZMQ keys must be refused."""
    return endpoint.startswith("tcp://") and not is_loopback(endpoint)


def owner_token_path(endpoint: str) -> Path:
    digest = hashlib.sha256(endpoint.encode()).hexdigest()[:16]
    return runtime_dir() / f"owner-{digest}.token"


def write_owner_token(endpoint: str) -> str:
    """A new owner token for the engine at `endpoint`, readable only by this user."""
    token = secrets.token_hex(16)
    path = owner_token_path(endpoint)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token)
    return token


def read_owner_token(endpoint: str) -> str | None:
    """The owner token of the engine at `endpoint`, if this user started it."""
    try:
        return owner_token_path(endpoint).read_text().strip()
    except FileNotFoundError:
        return None


def create_keys(directory: str | Path) -> Path:
    """A keys directory with a server key pair, one client key pair, and that client admitted."""
    directory = Path(directory)
    (directory / "clients").mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    zmq.auth.create_certificates(directory, "server")
    client_public, _ = zmq.auth.create_certificates(directory, "client")
    shutil.copy(client_public, directory / "clients" / "client.key")
    return directory


def serve_with_curve(sock: zmq.Socket, keys: Path) -> zmq.auth.thread.ThreadAuthenticator:
    """Make `sock` a CurveZMQ server admitting the public keys in `keys/clients` (call before bind)."""
    from zmq.auth.thread import ThreadAuthenticator

    authenticator = ThreadAuthenticator(zmq.Context.instance())
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(keys / "clients"))
    public, secret = zmq.auth.load_certificate(keys / "server.key_secret")
    sock.curve_publickey, sock.curve_secretkey, sock.curve_server = public, secret, True
    return authenticator


def connect_with_curve(sock: zmq.Socket, keys: Path) -> None:
    """Make `sock` a CurveZMQ client of the engine whose public key is `keys/server.key` (before connect)."""
    server_public, _ = zmq.auth.load_certificate(keys / "server.key")
    public, secret = zmq.auth.load_certificate(keys / "client.key_secret")
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
