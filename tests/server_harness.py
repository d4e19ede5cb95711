"""An EngineServer on the fake model, served from a thread of the test process."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fake_model import FakeModel
from radixlm.client import Client
from radixlm.connection import Connection
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.server import EngineServer


@contextmanager
def serve_in_thread(server: EngineServer) -> Iterator[EngineServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=5)


@contextmanager
def fake_server(tmp_path: Path, model: FakeModel | None = None, **cfg) -> Iterator[EngineServer]:
    engine = Engine(model or FakeModel(), EngineConfig(**cfg), eos_token_ids=[0])
    endpoint = f"ipc://{tmp_path / ('e-' + uuid.uuid4().hex[:8] + '.sock')}"
    with serve_in_thread(EngineServer(engine, endpoint)) as server:
        yield server


def wait_for_engine(endpoint: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Ping the engine process at `endpoint` until it answers; fail if it exits or `timeout` s pass first."""
    probe = Client(Connection(endpoint), timeout=0.5)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe.ping()
                return
            except TimeoutError:
                assert proc.poll() is None, f"the engine process exited with code {proc.returncode} while starting"
                assert time.monotonic() < deadline, f"the engine at {endpoint} did not answer within {timeout} s"
    finally:
        probe.close()


def client_for(server: EngineServer, timeout: float = 10.0) -> Client:
    return Client(Connection(server.endpoint), timeout=timeout)


def settled_stats(client: Client, timeout: float = 10.0) -> dict:
    """Stats with integrity checked, once nothing runs and every slot is free or evictable (pending
    last-token passes of finished requests hold their locks for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = client.stats(check_integrity=True)
        idle = not stats["running"] and not stats["waiting"]
        if idle and stats["pool_free"] + stats["cache_evictable"] == stats["pool_capacity"]:
            return stats
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.05)
