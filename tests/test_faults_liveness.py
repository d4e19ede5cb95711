"""Liveness both ways: a client notices a frozen engine by heartbeat (no pid needed), and the engine
aborts the non-streaming requests of a client that went away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from radixlm import EngineDiedError, protocol as P
from radixlm.client import Client
from radixlm.connection import Connection
from server_harness import client_for, fake_server, wait_for_engine

HERE = Path(__file__).parent


@pytest.fixture
def engine_process(tmp_path):
    endpoint = f"ipc://{tmp_path / 'engine.sock'}"
    proc = subprocess.Popen([sys.executable, str(HERE / "fake_engine_process.py"), endpoint])
    try:
        wait_for_engine(endpoint, proc, timeout=60)
        yield proc, endpoint
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_a_frozen_engine_is_declared_dead_by_heartbeat(engine_process):
    proc, endpoint = engine_process
    # No process handle and no pid: as for an engine on another host, only the heartbeat can tell.
    client = Client(Connection(endpoint, heartbeat_timeout=2.0), timeout=None)
    assert client.conn.engine_pid is None and client.conn.process is None
    assert client.generate([5, 6, 7], max_new_tokens=3, ignore_eos=True).completion_tokens == 3
    stream = client.stream([5, 6, 7], max_new_tokens=4000, ignore_eos=True)
    next(stream)
    os.kill(proc.pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(EngineDiedError, match="did not answer"):
        for _ in stream:
            pass
    assert time.monotonic() - start < 6
    client.close()


def test_a_stopped_local_engine_is_declared_dead_by_its_process_state(engine_process):
    proc, endpoint = engine_process
    client = Client(Connection(endpoint), timeout=None)
    client.conn.engine_pid = proc.pid  # what connect() records for an engine on this host's ipc socket
    stream = client.stream([5, 6, 7], max_new_tokens=4000, ignore_eos=True)
    next(stream)
    os.kill(proc.pid, signal.SIGSTOP)
    with pytest.raises(EngineDiedError, match=f"engine process {proc.pid} is stopped"):
        for _ in stream:
            pass
    client.close()


def test_a_busy_engine_that_answers_is_not_declared_dead(engine_process):
    _, endpoint = engine_process
    client = Client(Connection(endpoint, heartbeat_timeout=3.0), timeout=None)
    time.sleep(3.5)  # idle longer than the timeout: nothing was owed, so nothing is missed
    assert client.generate([5, 6, 7], max_new_tokens=3000, ignore_eos=True).completion_tokens == 3000
    client.close()


def test_a_gone_client_has_its_non_streaming_requests_aborted(tmp_path):
    with fake_server(tmp_path) as server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        gen = P.Generate(rid="x", input_ids=list(range(1, 40)), sampling=P.SamplingParams(max_new_tokens=4000, ignore_eos=True))
        sock.send_multipart([P.VERSION, P.encode(gen)])
        c = client_for(server)
        deadline = time.monotonic() + 5
        while not c.stats()["running"]:
            assert time.monotonic() < deadline, "the request never started running"
            time.sleep(0.01)
        sock.close(linger=0)
        while c.stats()["running"]:
            assert time.monotonic() < deadline, "the gone client's request kept running"
            time.sleep(0.05)
        stats = c.stats(check_integrity=True)
        assert stats["generated_tokens"] < 4000 and stats["integrity"] == "ok"
        assert stats["pool_free"] + stats["cache_evictable"] == stats["pool_capacity"]
        c.close()
