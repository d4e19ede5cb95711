"""Scale-out through SGLang's model gateway: two `radixlm serve --http-port` engines behind `smg launch
--policy cache_aware --backend sglang`. An agent's later calls reach the engine that holds its prefix
(cached tokens reported), and when that engine is killed the calls that had not started go to the other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from http_harness import free_port, start, stop, wait_healthy

import radixlm

pytestmark = pytest.mark.slow

SMG = Path(sys.executable).parent / "smg"


def _wait_router(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"smg exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/v1/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"smg at {url} did not come up within {timeout} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not SMG.exists():
        pytest.skip("smg (SGLang's model gateway, `pip install smg`) is not installed")
    folder = tmp_path_factory.mktemp("smg")
    engines = [start(folder), start(folder)]
    router = None
    try:
        for e in engines:
            wait_healthy(e.url, e.proc)
        port = free_port()
        router = subprocess.Popen([str(SMG), "launch", "--host", "127.0.0.1", "--port", str(port),
                                   "--worker-urls", *(e.url for e in engines), "--policy", "cache_aware",
                                   "--backend", "sglang", "--health-check-interval-secs", "1",
                                   "--health-failure-threshold", "1", "--log-level", "warn"])
        url = f"http://127.0.0.1:{port}"
        _wait_router(url, router)
        yield url, engines
    finally:
        if router is not None:
            router.terminate()
            router.wait(timeout=30)
        for e in engines:
            stop(e)


def _finished(engine) -> int:
    client = radixlm.connect(engine.endpoint, spawn=False, timeout=60)
    try:
        return client.stats()["requests_finished"]
    finally:
        client.close()


def test_an_agent_stays_on_one_engine_and_fails_over_when_it_dies(cluster):
    url, engines = cluster
    client = radixlm.connect(url, api="radixlm", timeout=300)
    before = [_finished(e) for e in engines]
    prompt = "You are a planning agent. Think step by step about how to bake bread.\n" * 3
    cached = []
    for step in range(3):
        r = client.generate(prompt + f"Step {step + 1}:", max_new_tokens=8, trace_id="agent-1")
        cached.append(r.cached_tokens)
        prompt += f"Step {step + 1}:" + r.text + "\n"
    served = [_finished(e) - b for e, b in zip(engines, before)]
    assert sorted(served) == [0, 3]  # every call of the agent on one engine
    assert all(c >= 50 for c in cached[1:])  # ... which had its earlier prompt cached
    home = engines[served.index(3)]
    other = engines[1 - served.index(3)]
    other_before = _finished(other)
    os.kill(home.proc.pid, signal.SIGKILL)  # the engine dies; its HTTP front follows it
    home.proc.wait(timeout=30)
    texts = []
    for step in range(3, 5):  # calls that had not started when the engine died
        r = client.generate(prompt + f"Step {step + 1}:", max_new_tokens=8, trace_id="agent-1")
        texts.append(r.text)
        prompt += f"Step {step + 1}:" + r.text + "\n"
    assert all(texts) and _finished(other) - other_before == 2
    client.close()
