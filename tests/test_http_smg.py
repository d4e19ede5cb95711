"""Scale-out through SGLang's model gateway: two radixlm workers (the real engine loop and HTTP front, on the
fake model so the test stays fast) behind `smg launch --policy cache_aware --backend sglang`. An agent's
later calls reach the worker that holds its prefix (cached tokens reported); when that worker is killed,
the calls that had not started go to the other one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fake_model import FakeModel

import radixlm
from radixlm.bench.http_servers import SMG, Server, free_port, start_smg, stop, wait_healthy

WORKER = Path(__file__).resolve().parent / "fake_http_worker.py"


@pytest.fixture
def cluster():
    if not SMG.exists():
        pytest.skip("smg (SGLang's model gateway, `pip install smg`) is not installed")
    ports = [free_port(), free_port()]
    workers = [Server(subprocess.Popen([sys.executable, str(WORKER), str(p)]), f"http://127.0.0.1:{p}")
               for p in ports]
    servers = list(workers)
    try:
        for w in workers:
            wait_healthy(w.url, w.proc, timeout=300.0)
        router = start_smg([w.url for w in workers], "--health-check-interval-secs", "1",
                           "--health-failure-threshold", "1")
        servers.append(router)
        yield router.url, [w.url for w in workers], [w.proc for w in workers]
    finally:
        stop(*servers)


def _finished(url: str) -> int:
    return httpx.get(url + "/get_server_info", timeout=10).json()["stats"]["requests_finished"]


def test_an_agent_stays_on_one_worker_and_fails_over_when_it_dies(cluster):
    router, urls, workers = cluster
    client = radixlm.connect(router, api="radixlm", timeout=60)
    prompt = list(range(1, 40))
    for step in range(3):
        r = client.generate(prompt, max_new_tokens=4, trace_id="agent-1")
        assert r.output_ids == FakeModel().reference(prompt, 4, eos=0)
        if step:
            assert r.cached_tokens >= len(prompt) - 5  # its previous prompt and output were cached there
        prompt += r.output_ids + [step + 1]
    served = [_finished(u) for u in urls]
    assert sorted(served) == [0, 3]  # every call of the agent on one worker
    home = served.index(3)
    workers[home].kill()  # the worker dies; the agent's next calls have not started yet
    workers[home].wait(timeout=30)
    for step in range(3, 5):
        r = client.generate(prompt, max_new_tokens=4, trace_id="agent-1")
        assert r.output_ids == FakeModel().reference(prompt, 4, eos=0)
        prompt += r.output_ids + [step + 1]
    assert _finished(urls[1 - home]) == 2
    client.close()
