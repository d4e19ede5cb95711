"""`radixlm serve --http-port` as a child process of the tests: the engine on SmolLM2, its ZeroMQ endpoint
and its HTTP front."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


from radixlm.bench.http_servers import free_port, wait_healthy  # noqa: F401 - the tests' helpers too


@dataclass
class HttpEngine:
    proc: subprocess.Popen
    endpoint: str  # ZeroMQ
    url: str  # HTTP front


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
