"""Child processes of the HTTP benches: `radixlm serve --http-port` engines and SGLang's model gateway (`smg`)
in front of them, started on free loopback ports and stopped with the bench."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

SMG = Path(sys.executable).parent / "smg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str  # HTTP
    endpoint: str | None = None  # ZeroMQ, for an engine


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600.0, path: str = "/health",
                 ready: Callable[[httpx.Response], bool] | None = None) -> None:
    """Poll GET url+path until it answers 200 (and `ready(response)` holds, when given); RuntimeError if
    `proc` exits, TimeoutError if `timeout` s pass first. The HTTP tests use it too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args[:4]))} exited with code {proc.returncode}")
        try:
            r = httpx.get(url + path, timeout=2.0)
            if r.status_code == 200 and (ready is None or ready(r)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}{path} did not become ready within {timeout:.0f} s")


def start_engine(*serve_flags: str, threads: int | None = None) -> Server:
    """`radixlm serve --model smollm2` on a private ipc endpoint and a free HTTP port; `threads` sets its
    OMP_NUM_THREADS (torch's thread count). Returns once /health answers."""
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='radixlm-bench-')}/engine.sock"
    port = free_port()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.Popen([sys.executable, "-m", "radixlm.cli", "serve", "--model", "smollm2", "--endpoint",
                             endpoint, "--http-port", str(port), *serve_flags], env=env)
    server = Server(proc, f"http://127.0.0.1:{port}", endpoint)
    try:
        wait_healthy(server.url, server.proc)
    except BaseException:
        stop(server)
        raise
    return server


def start_smg(worker_urls: list[str], *launch_flags: str, policy: str = "cache_aware") -> Server:
    """`smg launch` routing to `worker_urls` (SGLang backend) on a free port, with `launch_flags` added;
    returns once it serves the workers' model. SystemExit when smg is not installed."""
    if not SMG.exists():
        raise SystemExit(f"smg (SGLang's model gateway) is not at {SMG}: pip install smg (the `bench` extra)")
    port = free_port()
    proc = subprocess.Popen([str(SMG), "launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls",
                             *worker_urls, "--policy", policy, "--backend", "sglang", "--prometheus-host",
                             "127.0.0.1", "--prometheus-port", str(free_port()), "--log-level", "error", *launch_flags],
                            stdout=subprocess.DEVNULL)
    server = Server(proc, f"http://127.0.0.1:{port}")
    try:
        wait_healthy(server.url, server.proc, 300.0, "/v1/models", ready=lambda r: bool(r.json()["data"]))
    except BaseException:
        stop(server)
        raise
    return server


def stop(*servers: Server) -> None:
    for server in servers:
        if server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=30)
