"""`radixlm serve --http-port` as a child process of the tests: the engine on SmolLM2, its ZeroMQ endpoint
and its HTTP front."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class HttpEngine:
    proc: subprocess.Popen
    endpoint: str  # ZeroMQ
    url: str  # HTTP front


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600.0, path: str = "/health",
                 ready: Callable[[httpx.Response], bool] | None = None) -> None:
    """Poll GET url+path until it answers 200 (and `ready(response)` holds, when given); fail if `proc`
    exits or `timeout` s pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with code {proc.returncode} while starting")
        try:
            r = httpx.get(url + path, timeout=2.0)
            if r.status_code == 200 and (ready is None or ready(r)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}{path} did not become ready within {timeout} s")


def start(folder: Path, *extra: str) -> HttpEngine:
    endpoint = f"ipc://{folder / ('engine-' + str(time.monotonic_ns()) + '.sock')}"
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.cli", "serve", "--model", "smollm2", "--endpoint", endpoint,
           "--http-port", str(port), "--kv-cache-tokens", "8192", *extra]
    proc = subprocess.Popen(cmd)
    return HttpEngine(proc, endpoint, f"http://127.0.0.1:{port}")


def stop(engine: HttpEngine) -> None:
    if engine.proc.poll() is None:
        engine.proc.terminate()
        engine.proc.wait(timeout=30)


@contextmanager
def http_engine(folder: Path, *extra: str) -> Iterator[HttpEngine]:
    engine = start(folder, *extra)
    try:
        wait_healthy(engine.url, engine.proc)
        yield engine
    finally:
        stop(engine)
