"""Where the engine listens: a per-user ipc socket in a 0700 runtime directory by default, or
loopback TCP."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/radixlm, else <tmp>/radixlm-<uid>; created 0700 and checked to be ours."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "radixlm" if base else Path(tempfile.gettempdir()) / f"radixlm-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; refusing to put the engine socket there")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def default_endpoint(name: str = "engine") -> str:
    """The ipc endpoint of the user's default engine (or of a named one)."""
    return f"ipc://{runtime_dir() / (name + '.sock')}"


def tcp_endpoint(port: int, host: str = "127.0.0.1") -> str:
    """A TCP endpoint; loopback unless a host is given explicitly."""
    return f"tcp://{host}:{port}"
