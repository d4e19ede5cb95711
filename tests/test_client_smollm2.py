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
from radixlm.protocol import SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name a large animal.", "Write one line about the sea."]


@pytest.fixture(scope="module")
def served(smollm2_engine):
    return smollm2_engine


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


def test_streamed_text_is_decoded_incrementally_without_broken_characters(served):
    for prompt in ["Write a line of emoji: 😀🎉", "Écris une phrase en français avec des accents: é, à, ç."]:
        full = served.generate(prompt, max_new_tokens=40, ignore_eos=True)
        chunks = list(served.stream(prompt, max_new_tokens=40, ignore_eos=True))
        assert "".join(c.text for c in chunks) == full.text
        # a character split across tokens is held back until complete (only a cut-off end stays broken)
        assert not any("\ufffd" in c.text for c in chunks[:-1])
        if "🎉" in full.text:  # an emoji takes two tokens: one chunk carries both
            assert any(len(c.token_ids) > 1 and "🎉" in c.text for c in chunks)
        assert [t for c in chunks for t in c.token_ids] == full.output_ids


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


def test_generation_controls_through_the_protocol(served):
    import json

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    r = served.generate([{"role": "user", "content": "Name a city as JSON."}], json_schema=schema, max_new_tokens=40)
    assert set(json.loads(r.text)) == {"city"}
    r = served.generate("Pick one:", choices=["alpha", "beta"], max_new_tokens=8)
    assert r.text in ("alpha", "beta")
    r = served.generate("The year is", regex=r"\d{4}", logprobs=True, top_logprobs=2, logprob_start_len=1)
    assert len(r.text) == 4 and r.text.isdigit()
    lp, token, text = r.output_logprobs[0]
    assert token == r.output_ids[0] and lp <= 0 and isinstance(text, str)
    assert len(r.prompt_logprobs) == r.prompt_tokens - 1 and all(p[0] <= 0 for p in r.prompt_logprobs)
    assert all(len(top) == 2 for top in r.output_top_logprobs)
    samples = served.generate("Say something:", n=3, temperature=1.0, seed=7, max_new_tokens=8)
    assert len(samples) == 3 and len({tuple(s.output_ids) for s in samples}) > 1
    stop_text = "".join(c.text for c in served.stream("Count: 1, 2, 3, 4, 5, 6, 7", stop=", 9", max_new_tokens=30))
    assert ", 9" not in stop_text


@pytest.mark.parametrize("bad, words", [
    (dict(regex="("), "invalid regex"),
    (dict(json_schema='{"type": "nonsense"}'), "invalid JSON schema"),
    (dict(lark="start: foo"), "invalid Lark"),
    (dict(regex="a", choices=["b"]), "exactly one"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
])
def test_invalid_generation_controls_are_errors_naming_the_problem(served, bad, words):
    with pytest.raises(radixlm.EngineError) as err:
        served.generate("hi", max_new_tokens=4, **bad)
    assert err.value.code == "invalid_request" and words in err.value.message
    assert served.generate("hi", max_new_tokens=2).completion_tokens >= 1
