"""Authentication: TCP beyond loopback needs CurveZMQ keys; Shutdown and Flush need the owner."""

from __future__ import annotations

import time

import pytest

import zmq

from fake_model import FakeModel
from radixlm import EngineError
from radixlm import protocol as P
from radixlm.auth import create_keys, is_loopback
from radixlm.client import Client
from radixlm.connection import Connection
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.server import EngineServer
from radixlm.bench.http_servers import free_port
from server_harness import serve_in_thread


def fake_engine() -> Engine:
    return Engine(FakeModel(), EngineConfig(kv_cache_tokens=1024), eos_token_ids=[0])


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "tcp://example.org:5"])
def test_binding_beyond_loopback_without_keys_is_refused(endpoint):
    with pytest.raises(PermissionError, match="without authentication"):
        EngineServer(fake_engine(), endpoint)


def test_loopback_detection():
    assert is_loopback("tcp://127.0.0.1:1") and is_loopback("tcp://[::1]:1") and is_loopback("tcp://localhost:1")
    assert not is_loopback("tcp://0.0.0.0:1") and not is_loopback("tcp://192.168.0.2:1")


def test_on_loopback_tcp_only_the_owner_may_shutdown_or_flush():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with serve_in_thread(EngineServer(fake_engine(), endpoint)) as server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        for msg in (P.Shutdown(rid="s"), P.Flush(rid="f"), P.Shutdown(rid="t", token="guess")):
            sock.send_multipart([P.VERSION, P.encode(msg)])
            assert sock.poll(60_000)
            reply = P.decode_response(sock.recv_multipart()[-1])
            assert isinstance(reply, P.Error) and reply.code == "unauthorized", reply
        sock.close()
        owner = Client(Connection(endpoint), timeout=60)  # same user: reads the owner token
        assert owner.generate([1, 2, 3], max_new_tokens=2, ignore_eos=True).completion_tokens == 2
        owner.flush_cache()
        owner.shutdown()
        deadline = time.monotonic() + 10  # the server thread sets the flag right after it replies
        while not server._stopping and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server._stopping


def test_curve_admits_listed_keys_only(tmp_path):
    keys = create_keys(tmp_path / "keys")
    endpoint = f"tcp://0.0.0.0:{free_port()}"
    with serve_in_thread(EngineServer(fake_engine(), endpoint, curve_keys=keys)):
        local = endpoint.replace("0.0.0.0", "127.0.0.1")
        stranger = Client(Connection(local), timeout=1.5)
        with pytest.raises(TimeoutError):
            stranger.ping()
        stranger.close()
        other = create_keys(tmp_path / "other")  # a valid key pair the engine does not list
        (other / "server.key").write_bytes((keys / "server.key").read_bytes())
        unlisted = Client(Connection(local, curve_keys=other), timeout=1.5)
        with pytest.raises(TimeoutError):
            unlisted.ping()
        unlisted.close()
        friend = Client(Connection(local, curve_keys=keys), timeout=60)
        assert friend.generate([1, 2, 3], max_new_tokens=2, ignore_eos=True).completion_tokens == 2
        friend.flush_cache()  # authenticated clients may manage the engine
        with pytest.raises(EngineError):
            friend.generate([1, 2, 3], n=10**9)
        friend.close()


def test_serve_refuses_an_open_tcp_bind_before_loading_the_model(capsys):
    from radixlm.cli import main

    assert main(["serve", "--model", "no-such-model", "--endpoint", "tcp://0.0.0.0:5999"]) == 2
    assert "refusing to serve tcp://0.0.0.0:5999 without authentication" in capsys.readouterr().err
