"""The client against a spawned `radixlm serve` on SmolLM2: same results as the in-process engine,
and a killed engine fails pending calls fast."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid

import pytest

import radixlm
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.request import SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name a large animal.", "Write one line about the sea."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    endpoint = f"ipc://{tmp_path_factory.mktemp('ipc') / 'engine.sock'}"
    client = radixlm.connect(endpoint, model="smollm2", timeout=120)
    yield client
    client.shutdown()


def test_sync_async_and_streaming_equal_the_in_process_engine(served, smollm2):
    engine = Engine(smollm2.model, EngineConfig(), smollm2.eos_token_ids, smollm2.tokenizer)
    for q in QUESTIONS:
        messages = [{"role": "user", "content": q}]
        ids = engine.prompt_ids(messages=messages)
        local = engine.generate([ids], SamplingParams(max_new_tokens=24))[0]
        remote = served.generate(messages, max_new_tokens=24)
        assert (remote.output_ids, remote.text) == (local.output_ids, local.text)
        chunks = list(served.stream(messages, max_new_tokens=24))
        assert [t for c in chunks for t in c.token_ids] == local.output_ids
        assert "".join(c.text for c in chunks) == local.text
        async_result = asyncio.run(served.aio.generate(messages, max_new_tokens=24))
        assert async_result.output_ids == local.output_ids
        assert remote.prompt_tokens == len(ids)
    assert served.stats(check_integrity=True)["integrity"] == "ok"


def test_cancelling_an_async_task_aborts_its_request(served):
    async def run():
        task = asyncio.create_task(served.aio.generate("Tell me a very long story.", max_new_tokens=2000, ignore_eos=True))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    deadline = time.time() + 5
    while time.time() < deadline and served.stats()["running"]:
        time.sleep(0.05)
    assert served.stats(check_integrity=True)["running"] == 0


def test_killing_the_engine_mid_stream_raises_within_two_seconds(tmp_path):
    client = radixlm.connect(f"ipc://{tmp_path / ('k' + uuid.uuid4().hex[:6])}.sock", model="smollm2", timeout=60)
    pid = client.ping()["pid"]
    errors, raised_at = [], []

    def consume():
        try:
            for _ in client.stream("Count from one to one thousand.", max_new_tokens=4000, ignore_eos=True):
                pass
        except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
            errors.append(exc)
            raised_at.append(time.monotonic())

    worker = threading.Thread(target=consume)
    worker.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=5)
    assert errors and isinstance(errors[0], radixlm.EngineDiedError)
    assert raised_at[0] - killed_at < 2.0
    with pytest.raises(radixlm.EngineDiedError):
        client.generate("anyone there?")
    client.close()


def test_a_spawned_engine_stops_when_its_owner_exits(tmp_path):
    import subprocess
    import sys

    endpoint = f"ipc://{tmp_path / 'owned.sock'}"
    owner = subprocess.run(
        [sys.executable, "-c",
         f"import os, radixlm; c = radixlm.connect({endpoint!r}, model='smollm2'); print(c.ping()['pid'], flush=True); "
         "os.kill(os.getpid(), 9)"],  # no atexit hooks run: the engine must notice on its own
        capture_output=True, text=True, timeout=300,
    )
    engine_pid = int(owner.stdout.strip().splitlines()[-1])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(engine_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(engine_pid, signal.SIGKILL)
        pytest.fail("the spawned engine outlived its owner")
