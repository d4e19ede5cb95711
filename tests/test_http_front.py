"""The HTTP front's endpoints on the fake model (no SmolLM2): status codes and error bodies as OpenAI and
SGLang shape them, the bearer-token check, and greedy outputs equal to the model's reference."""

from __future__ import annotations

import json
import time

import pytest
from fake_model import FakeModel
from server_harness import client_for, fake_server
from starlette.testclient import TestClient

from radixlm.http.app import build_app
from radixlm.http.front import Front


@pytest.fixture(scope="module")
def engine_client(tmp_path_factory):
    with fake_server(tmp_path_factory.mktemp("front")) as server:
        client = client_for(server, timeout=30)
        yield client
        client.close()


@pytest.fixture(scope="module")
def http(engine_client):
    with TestClient(build_app(Front(engine_client, "fake", 4096))) as c:
        yield c


@pytest.fixture(scope="module")
def http_with_key(engine_client):
    with TestClient(build_app(Front(engine_client, "fake", 4096, api_key="s3cret"))) as c:
        yield c


def test_generate_with_input_ids_gives_the_greedy_reference(http):
    prompt = [3, 5, 7, 9]
    r = http.post("/generate", json={"input_ids": prompt, "sampling_params": {"max_new_tokens": 6, "temperature": 0}})
    assert r.status_code == 200
    body = r.json()
    assert body["output_ids"] == FakeModel().reference(prompt, 6, eos=0)
    assert body["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert body["meta_info"]["prompt_tokens"] == 4 and body["meta_info"]["completion_tokens"] == 6


def test_generate_batch_prefix_hint_and_cached_tokens(http):
    prompt = [11, 12, 13, 14, 15, 16]
    hint = http.post("/generate", json={"input_ids": prompt, "sampling_params": {"max_new_tokens": 0}}).json()
    assert hint["output_ids"] == [] and hint["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    both = http.post("/generate", json={"input_ids": [prompt + [1], prompt + [2]],
                                        "sampling_params": {"max_new_tokens": 2, "temperature": 0}}).json()
    assert [b["output_ids"] for b in both] == [FakeModel().reference(prompt + [k], 2, eos=0) for k in (1, 2)]
    assert all(b["meta_info"]["cached_tokens"] >= len(prompt) - 1 for b in both)


def test_generate_stream_sends_the_text_so_far_and_done(http):
    prompt = [21, 22, 23]
    with http.stream("POST", "/generate", json={"input_ids": prompt, "stream": True,
                                                "sampling_params": {"max_new_tokens": 4}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[5:]) for line in lines[:-1]]
    assert events[-1]["output_ids"] == FakeModel().reference(prompt, 4, eos=0)
    assert events[-1]["meta_info"]["finish_reason"]["type"] in ("length", "stop")
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])


def test_openai_completions_with_token_ids_and_n(http):
    r = http.post("/v1/completions", json={"model": "fake", "prompt": [4, 5, 6], "max_tokens": 3, "n": 2,
                                           "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == 9 and "cached_tokens" in body["usage"]["prompt_tokens_details"]


@pytest.mark.parametrize("payload, param, fragment", [
    ({"model": "fake", "prompt": [1], "max_tokens": "many"}, "max_tokens", "Expected `int | null`, got `str`"),
    ({"model": "fake", "prompt": [1], "frobnicate": True}, "frobnicate", "unknown field `frobnicate`"),
    ({"model": "fake", "prompt": [1], "max_tokens": 0}, "max_tokens", "max_tokens must be at least 1"),
    ({"model": "fake", "prompt": [1], "echo": True}, "echo", "echo is not supported"),
    ({"model": "fake", "prompt": [], "max_tokens": 1}, "prompt", "prompt must be"),
    ({"model": "fake", "prompt": [1], "logit_bias": {"5": 1.0}}, "logit_bias", "logit_bias is not supported"),
])
def test_openai_bad_requests_get_400_naming_the_field(http, payload, param, fragment):
    r = http.post("/v1/completions", json=payload)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and fragment in err["message"]


def test_openai_unknown_model_is_404_model_not_found(http):
    r = http.post("/v1/completions", json={"model": "gpt-9", "prompt": [1]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_engine_validation_errors_are_400_and_the_engine_keeps_serving(http):
    r = http.post("/v1/completions", json={"model": "fake", "prompt": [1, 2], "temperature": -1})
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": "fake", "prompt": [1, 2], "stream": True, "top_p": 7})
    assert r.status_code == 400 and "top_p" in r.json()["error"]["message"]  # an error status, not a broken stream
    assert http.post("/v1/completions", json={"model": "fake", "prompt": [1, 2], "max_tokens": 1}).status_code == 200


@pytest.mark.parametrize("payload, fragment", [
    ({"text": "a", "input_ids": [1]}, "exactly one of text, input_ids and messages"),
    ({"input_ids": [1], "sampling_params": {"max_new_tokens": 2, "warp": 3}}, "unknown sampling parameter 'warp'"),
    ({"input_ids": [1], "sampling_params": {"ebnf": "root ::= \"a\""}}, "ebnf"),
    ({"input_ids": [1], "bogus": 1}, "unknown field(s) bogus"),
    ({"input_ids": [1], "lora_path": "adapter"}, "lora_path is not supported"),
    ({"input_ids": ["x"]}, "input_ids must be"),
    ({"input_ids": [1], "sampling_params": {"temperature": -2}}, "temperature"),
])
def test_sglang_bad_requests_get_400_with_sglang_error_body(http, payload, fragment):
    r = http.post("/generate", json=payload)
    assert r.status_code == 400 and set(r.json()) == {"error"} and fragment in r.json()["error"]["message"]


def test_malformed_json_and_unknown_routes(http):
    r = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = http.post("/generate", content=b"[1, 2")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/completions").status_code == 405


def test_api_key_is_required_except_for_health(http_with_key):
    r = http_with_key.post("/v1/completions", json={"model": "fake", "prompt": [1], "max_tokens": 1})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = http_with_key.post("/generate", json={"input_ids": [1]}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and set(r.json()) == {"error"}
    ok = http_with_key.post("/v1/completions", json={"model": "fake", "prompt": [1], "max_tokens": 1},
                            headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert http_with_key.get("/health").status_code == 200


def test_models_and_server_info(http):
    assert http.get("/v1/models").json()["data"][0]["id"] == "fake"
    info = http.get("/get_server_info").json()
    assert info["engine"] == "radixlm" and info["stats"]["running"] == 0
    assert http.get("/get_model_info").json()["model_path"] == "fake"
    for _ in range(100):  # the engine refuses to flush while work (a finished request's last pass) is pending
        r = http.post("/flush_cache")
        if r.status_code == 200:
            break
        assert r.status_code == 400 and "while requests are running" in r.json()["error"]["message"]
        time.sleep(0.05)
    assert r.status_code == 200


def test_connect_over_http_rejects_options_that_do_not_apply_and_names_an_unreachable_server():
    import radixlm

    with pytest.raises(TypeError, match="engine options"):
        radixlm.connect("http://127.0.0.1:9", kv_cache_tokens=1024)
    with pytest.raises(TypeError, match="http:// endpoints only"):
        radixlm.connect("ipc:///nonexistent/engine.sock", api="openai", spawn=False)
    with pytest.raises(ValueError, match="unknown api"):
        radixlm.connect("http://127.0.0.1:9", api="grpc")
    with pytest.raises(radixlm.EngineDiedError, match="unreachable"):
        radixlm.connect("http://127.0.0.1:9")


@pytest.fixture(scope="module")
def served_url(engine_client):
    import threading
    import time

    import uvicorn
    from radixlm.bench.http_servers import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(Front(engine_client, "fake", 4096)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the uvicorn server thread died before it started serving"
        assert time.monotonic() < deadline, f"the uvicorn server on port {port} did not start within 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_httpx_client_in_both_dialects_against_the_front(served_url):
    import radixlm

    prompt = [7, 8, 9, 10]
    expected = FakeModel().reference(prompt, 3, eos=0)
    native = radixlm.connect(served_url)
    assert native.dialect.name == "radixlm"
    r = native.generate(prompt, max_new_tokens=3, trace_id="t-1")
    assert r.output_ids == expected and r.completion_tokens == len(expected)
    items = list(native.stream(prompt, max_new_tokens=3, include_result=True))
    assert [t for c in items[:-1] for t in c.token_ids] == expected and items[-1].output_ids == expected
    assert native.generate(prompt, max_new_tokens=3).cached_tokens >= len(prompt) - 1
    openai = radixlm.connect(served_url, model="fake", api="openai")
    r = openai.generate(prompt, max_new_tokens=3)
    assert r.completion_tokens == len(expected) and r.prompt_tokens == len(prompt) and r.output_ids == []
    with pytest.raises(ValueError, match="native /generate"):
        openai.generate(prompt, prefix_only=True)
    with pytest.raises(radixlm.EngineError, match="HTTP 400"):
        native.generate(prompt, temperature=-1)
    native.close()
    openai.close()


def test_end_trace_over_http_sync_async_and_everywhere(served_url):
    import asyncio

    import radixlm
    from radixlm.client import end_trace_everywhere

    native = radixlm.connect(served_url)
    for trace in ("sync-agent", "async-agent", "root-run"):
        native.generate([4, 5, 6], max_new_tokens=2, trace_id=trace)
    assert native.open_traces == {"sync-agent", "async-agent", "root-run"}
    assert native.end_trace("sync-agent") == {"trace_id": "sync-agent", "ended": True, "released_pin": True}
    assert asyncio.run(native.aio.end_trace("async-agent"))["ended"] is True
    end_trace_everywhere("root-run")
    assert not native.open_traces
    assert native.end_trace("root-run")["ended"] is False  # already ended by end_trace_everywhere
    with pytest.raises(radixlm.EngineError, match="HTTP 400.*trace_id"):
        native.end_trace("")
    openai = radixlm.connect(served_url, model="fake", api="openai")
    openai.generate([4, 5, 6], max_new_tokens=2, trace_id="routed")
    assert not openai.open_traces
    with pytest.raises(ValueError, match="only a radixlm server keeps KV per agent trace"):
        openai.end_trace("routed")
    native.close()
    openai.close()
