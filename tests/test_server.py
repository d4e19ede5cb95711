"""The ZeroMQ service on the fake model: bad input, fuzzing, aborts, disconnects, endpoints."""

from __future__ import annotations

import asyncio
import os
import stat
import time

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_model import FakeModel
import radixlm
from radixlm import EngineError, protocol as P
from radixlm.endpoint import runtime_dir, tcp_endpoint
from server_harness import client_for, fake_server

PROMPT = [5, 6, 7, 8, 9]


def test_generate_stream_and_async_agree(tmp_path):
    with fake_server(tmp_path) as server:
        c = client_for(server)
        full = c.generate(PROMPT, max_new_tokens=12, ignore_eos=True)
        assert full.output_ids == FakeModel().reference(PROMPT, 12)
        streamed = [t for ch in c.stream(PROMPT, max_new_tokens=12, ignore_eos=True) for t in ch.token_ids]
        assert streamed == full.output_ids
        *chunks, result = c.stream(PROMPT, include_result=True, max_new_tokens=12, ignore_eos=True)
        assert isinstance(result, radixlm.Result) and result.output_ids == full.output_ids
        assert [t for ch in chunks for t in ch.token_ids] == full.output_ids
        assert (result.completion_tokens, result.finish_reason) == (12, "length")

        async def astream():
            return [item async for item in c.aio.stream(PROMPT, include_result=True, max_new_tokens=12,
                                                         ignore_eos=True)]

        assert asyncio.run(astream())[-1].output_ids == result.output_ids

        async def run():
            return await asyncio.gather(*[c.aio.generate(PROMPT, max_new_tokens=12, ignore_eos=True) for _ in range(5)])

        assert all(r.output_ids == full.output_ids for r in asyncio.run(run()))
        assert c.stats()["requests_finished"] == 9
        c.close()


@pytest.mark.parametrize(
    "kwargs, code, words",
    [
        (dict(prompt=[]), "invalid_request", "empty"),
        (dict(prompt=[10**7]), "invalid_request", "vocabulary"),
        (dict(prompt=list(range(1, 60)) * 100), "invalid_request", "context"),
        (dict(prompt=PROMPT, max_new_tokens=0), "invalid_request", "max_new_tokens"),
        (dict(prompt="text but no tokenizer"), "invalid_request", "tokenizer"),
    ],
)
def test_invalid_requests_get_errors_and_the_engine_keeps_serving(tmp_path, kwargs, code, words):
    with fake_server(tmp_path, max_context=1000) as server:
        c = client_for(server)
        with pytest.raises(EngineError) as err:
            c.generate(**kwargs)
        assert err.value.code == code and words in err.value.message
        assert c.generate(PROMPT, max_new_tokens=3, ignore_eos=True).completion_tokens == 3
        assert c.stats(check_integrity=True)["integrity"] == "ok"
        c.close()


def raw_socket(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    return sock


def recv(sock, timeout_ms=2000):
    """The next reply that is not a Heartbeat (sent while requests are in flight), or None."""
    while sock.poll(timeout_ms):
        reply = P.decode_response(sock.recv_multipart()[-1])
        if not isinstance(reply, P.Heartbeat):
            return reply
    return None


def test_protocol_violations_name_the_problem(tmp_path):
    with fake_server(tmp_path) as server:
        sock = raw_socket(server)
        cases = [
            ([b"bogus/9", P.encode(P.Ping(rid="a"))], "bad_version"),
            ([P.VERSION, b"\xc1\xc1 not msgpack"], "bad_message"),
            ([P.VERSION, msgspec.msgpack.encode({"type": "generate", "rid": "b", "bogus": 1})], "bad_message"),
            ([P.VERSION, msgspec.msgpack.encode({"type": "generate", "rid": "c", "sampling": {"max_new_tokens": "x"}})], "bad_message"),
            ([P.VERSION, P.encode(P.Abort(rid="d", target="nope"))], "unknown_request"),
            ([P.VERSION], "bad_message"),
        ]
        for frames, code in cases:
            sock.send_multipart(frames)
            reply = recv(sock)
            assert isinstance(reply, P.Error) and reply.code == code, (frames[:1], reply)
        sock.send_multipart([P.VERSION, msgspec.msgpack.encode({"type": "generate", "rid": "e", "bogus": 1})])
        assert recv(sock).rid == "e", "errors are routed to the rid the caller used"
        sock.close()


message_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(["generate", "abort", "info", "stats", "flush", "ping", "zzz"]),
     "rid": st.one_of(st.text(max_size=8), st.integers(-2**63, 2**63 - 1))},
    optional={
        "input_ids": st.lists(st.integers(-5, 100), max_size=6),
        "text": st.text(max_size=5),
        "sampling": st.dictionaries(st.sampled_from(["max_new_tokens", "ignore_eos", "x"]),
                                    st.one_of(st.integers(-3, 4), st.booleans(), st.text(max_size=2))),
        "target": st.text(max_size=4),
        "stream": st.booleans(),
        "extra": st.integers(-2**63, 2**63 - 1),
    },
)
frames_strategy = st.one_of(
    st.lists(st.binary(max_size=40), min_size=0, max_size=4),
    message_dicts.map(lambda d: [P.VERSION, msgspec.msgpack.encode(d)]),
)


def test_fuzzed_frames_get_errors_or_are_dropped(tmp_path):
    with fake_server(tmp_path) as server:
        sock = raw_socket(server)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(frames=frames_strategy)
        def fuzz(frames):
            if not frames:
                return
            sock.send_multipart(frames)
            while recv(sock, timeout_ms=20) is not None:
                pass

        fuzz()
        time.sleep(0.2)
        while recv(sock, timeout_ms=50) is not None:
            pass
        sock.close()
        c = client_for(server)
        assert c.generate(PROMPT, max_new_tokens=4, ignore_eos=True).completion_tokens == 4
        stats = c.stats(check_integrity=True)
        assert stats["integrity"] == "ok" and stats["running"] == 0
        c.close()


def test_closing_a_stream_aborts_and_frees_its_slots(tmp_path):
    with fake_server(tmp_path) as server:
        c = client_for(server)
        baseline = c.stats()["pool_free"] + c.stats()["cache_evictable"]
        stream = c.stream(list(range(1, 40)), max_new_tokens=500, ignore_eos=True)
        next(stream)
        stream.close()
        deadline = time.time() + 2
        while time.time() < deadline:
            stats = c.stats()
            if not stats["running"] and stats["pool_free"] + stats["cache_evictable"] == baseline:
                break
            time.sleep(0.02)
        stats = c.stats(check_integrity=True)
        assert stats["generated_tokens"] < 500, "the request was aborted, not run to its end"
        assert stats["running"] == 0 and stats["integrity"] == "ok"
        assert stats["pool_free"] + stats["cache_evictable"] == baseline
        c.close()


def test_a_client_that_disconnects_mid_stream_has_its_request_aborted(tmp_path):
    with fake_server(tmp_path) as server:
        sock = raw_socket(server)
        sock.send_multipart([P.VERSION, P.encode(P.Generate(rid="x", input_ids=list(range(1, 40)), stream=True,
                                                             sampling=P.SamplingParams(max_new_tokens=4000, ignore_eos=True)))])
        assert isinstance(recv(sock), P.Chunk)
        sock.close(linger=0)
        c = client_for(server)
        deadline = time.time() + 5
        while time.time() < deadline and c.stats()["running"]:
            time.sleep(0.05)
        stats = c.stats(check_integrity=True)
        assert stats["running"] == 0 and stats["integrity"] == "ok"
        assert stats["pool_free"] + stats["cache_evictable"] == stats["pool_capacity"]
        c.close()


def test_an_oversized_message_is_refused_by_the_socket_before_any_decode(tmp_path):
    with fake_server(tmp_path) as server:
        sock = raw_socket(server)
        sock.send_multipart([P.VERSION, b"x" * (P.MAX_MESSAGE_BYTES + 1)])
        assert recv(sock, timeout_ms=300) is None, "libzmq drops the sender; nothing reaches the engine"
        sock.close()
        c = client_for(server)
        with pytest.raises(ValueError, match="exceeds the engine's limit"):
            c.generate("x" * (P.MAX_MESSAGE_BYTES + 1))
        assert c.generate(PROMPT, max_new_tokens=3, ignore_eos=True).completion_tokens == 3
        c.close()


def test_duplicate_rid_is_rejected(tmp_path):
    with fake_server(tmp_path) as server:
        sock = raw_socket(server)
        gen = P.Generate(rid="same", input_ids=PROMPT, sampling=P.SamplingParams(max_new_tokens=4000, ignore_eos=True))
        sock.send_multipart([P.VERSION, P.encode(gen)])
        sock.send_multipart([P.VERSION, P.encode(gen)])
        reply = recv(sock)
        assert isinstance(reply, P.Error) and reply.code == "duplicate_request"
        sock.send_multipart([P.VERSION, P.encode(P.Abort(rid="a", target="same"))])
        assert isinstance(recv(sock), P.Reply)
        sock.close()


def test_runtime_dir_is_private_and_tcp_defaults_to_loopback():
    path = runtime_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.getuid()
    assert tcp_endpoint(5555) == "tcp://127.0.0.1:5555"


def test_flushing_while_busy_is_an_error_not_a_crash(tmp_path):
    with fake_server(tmp_path) as server:
        sock = raw_socket(server)
        gen = P.Generate(rid="long", input_ids=PROMPT, sampling=P.SamplingParams(max_new_tokens=4000, ignore_eos=True))
        sock.send_multipart([P.VERSION, P.encode(gen)])
        sock.send_multipart([P.VERSION, P.encode(P.Flush(rid="f"))])
        reply = recv(sock)
        assert isinstance(reply, P.Error) and reply.code == "invalid_request" and "flush" in reply.message
        sock.send_multipart([P.VERSION, P.encode(P.Abort(rid="a", target="long"))])
        assert isinstance(recv(sock), P.Reply)
        sock.close()
        c = client_for(server)
        c.flush_cache()
        assert c.generate(PROMPT, max_new_tokens=2, ignore_eos=True).completion_tokens == 2
        c.close()
