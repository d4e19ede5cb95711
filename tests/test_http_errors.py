"""What the engine client refuses to send (a message over the size limit, an option it cannot encode)
is a 400 with the client's message, in OpenAI's error body on /v1 and SGLang's elsewhere, not a 500."""

from __future__ import annotations

import pytest
from server_harness import client_for, fake_server
from starlette.testclient import TestClient

from radixlm import protocol as P
from radixlm.http.app import build_app
from radixlm.http.front import Front

TOO_LARGE = "a" * (P.MAX_MESSAGE_BYTES + 1)
LIMIT_MESSAGE = f"exceeds the engine's limit of {P.MAX_MESSAGE_BYTES}"


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    with fake_server(tmp_path_factory.mktemp("errors")) as server:
        client = client_for(server, timeout=30)
        with TestClient(build_app(Front(client, "fake", 4096))) as c:
            yield c
        client.close()


@pytest.mark.parametrize("stream", [False, True])
def test_openai_message_over_the_size_limit_is_400_with_openai_body(http, stream):
    r = http.post("/v1/completions", json={"model": "fake", "prompt": TOO_LARGE, "max_tokens": 1, "stream": stream})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and LIMIT_MESSAGE in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_sglang_message_over_the_size_limit_is_400_with_sglang_body(http, stream):
    r = http.post("/generate", json={"text": TOO_LARGE, "stream": stream, "sampling_params": {"max_new_tokens": 1}})
    body = r.json()
    assert r.status_code == 400 and set(body) == {"error"} and set(body["error"]) == {"message"}
    assert LIMIT_MESSAGE in body["error"]["message"]


def test_option_the_client_cannot_encode_is_400_and_the_engine_keeps_serving(http):
    r = http.post("/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1, "stop": 5}})
    assert r.status_code == 400 and "not iterable" in r.json()["error"]["message"]
    assert http.post("/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}}).status_code == 200
