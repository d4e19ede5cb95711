"""Real clients against the HTTP front of a `radixlm serve --http-port` engine on SmolLM2, no mocks: the
openai SDK, langchain-openai's ChatOpenAI, dspy.LM("openai/..."), SGLang's own frontend; radixlm's own
adapters and programs through connect("http://...") against the same engine through ZeroMQ."""

from __future__ import annotations

import json
import sys
import time
import types

import httpx
import jsonschema
import pytest
from http_harness import http_engine

import radixlm

pytestmark = pytest.mark.slow

SYSTEM = "You are a concise assistant. Answer in one short sentence. " * 4
ADD_TOOL = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}


@pytest.fixture(scope="module")
def engine():
    with http_engine() as e:
        yield e


@pytest.fixture(scope="module")
def zmq(engine):
    client = radixlm.connect(engine.endpoint, spawn=False, timeout=300)
    yield client
    client.close()


@pytest.fixture(scope="module")
def oai(engine):
    import openai

    return openai.OpenAI(base_url=engine.url + "/v1", api_key="unused", timeout=300)


def test_openai_chat_matches_the_engine_and_reports_cached_tokens(oai, zmq):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of Italy?"}]
    first = oai.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, temperature=0)
    again = oai.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, temperature=0)
    text = first.choices[0].message.content
    assert text == again.choices[0].message.content == zmq.generate(messages, max_new_tokens=8).text
    assert first.usage.completion_tokens == 8 and first.choices[0].finish_reason == "length"
    assert again.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1


def test_openai_completions_logprobs_and_streaming_with_usage(oai, zmq):
    prompt = "The capital of France is"
    r = oai.completions.create(model="smollm2", prompt=prompt, max_tokens=5, temperature=0, logprobs=2)
    ref = zmq.generate(prompt, max_new_tokens=5, logprobs=True, top_logprobs=2)
    assert r.choices[0].text == ref.text
    assert r.choices[0].logprobs.tokens == [e[2] for e in ref.output_logprobs]
    assert r.choices[0].logprobs.token_logprobs == pytest.approx([e[0] for e in ref.output_logprobs], abs=1e-4)
    chunks = list(oai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == zmq.generate([{"role": "user", "content": "Name a fruit."}], max_new_tokens=6).text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_openai_tools_and_json_schema(oai):
    r = oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "What is 2 + 3?"}],
                                    tools=[ADD_TOOL], tool_choice="required", temperature=0, max_tokens=40)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "add" and isinstance(args["a"], int) and isinstance(args["b"], int)
    followup = oai.chat.completions.create(
        model="smollm2", tools=[ADD_TOOL], tool_choice="none", temperature=0, max_tokens=20,
        messages=[{"role": "user", "content": "What is 2 + 3?"}, choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "5"}])
    assert followup.choices[0].message.tool_calls is None and followup.choices[0].message.content
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"]}
    r = oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Name a city."}],
                                    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
                                    temperature=0, max_tokens=40)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_langchain_chat_openai_with_tools(engine):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = ChatOpenAI(model="smollm2", base_url=engine.url + "/v1", api_key="unused", temperature=0, max_tokens=40)
    msg = llm.bind_tools([add], tool_choice="any").invoke("What is 2 + 3?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "add"
    assert set(msg.tool_calls[0]["args"]) == {"a", "b"}
    assert add.invoke(msg.tool_calls[0]["args"]) == msg.tool_calls[0]["args"]["a"] + msg.tool_calls[0]["args"]["b"]
    assert msg.usage_metadata["input_tokens"] > 0


def test_dspy_openai_lm_runs_chain_of_thought(engine):
    """DSPy knows no JSON mode for an unknown OpenAI model name, so the schema goes in `extra_body`: the
    front constrains the reply to it and DSPy's JSONAdapter parses it."""
    import dspy

    schema = {"type": "object", "properties": {"reasoning": {"type": "string", "maxLength": 80},
                                               "answer": {"type": "string", "maxLength": 30}},
              "required": ["reasoning", "answer"]}
    lm = dspy.LM("openai/smollm2", api_base=engine.url + "/v1", api_key="unused", temperature=0, max_tokens=60,
                 cache=False, num_retries=0,
                 extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "cot", "schema": schema}}})
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = dspy.ChainOfThought("question -> answer")(question="What is the capital of France?")
    assert isinstance(pred.reasoning, str) and pred.reasoning
    assert isinstance(pred.answer, str) and pred.answer


def _fork_join_program():
    @radixlm.function
    def program(s, topic):
        s += f"Topic: {topic}.\nIs it about nature? Answer: " + radixlm.select("nature", choices=["yes", "no"]) + "\n"
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Fact {i + 1}:" + radixlm.gen("fact", max_tokens=8, stop="\n")
        forks.join()
        s += "Facts: " + forks[0]["fact"] + " /" + forks[1]["fact"]

    return program


def _run_everything(endpoint: str) -> dict:
    import dspy
    from langchain_core.tools import tool

    from radixlm.adapters.dspy import LM
    from radixlm.adapters.langchain import ChatRadixLM

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    out: dict = {}
    with dspy.context(lm=LM(endpoint=endpoint, cache=False, max_tokens=24, num_retries=0), adapter=dspy.ChatAdapter()):
        pred = dspy.ChainOfThought("question -> answer")(question="What is the capital of Spain?")
    out["dspy"] = pred.answer
    chat = ChatRadixLM(endpoint=endpoint, max_tokens=12)
    out["langchain"] = chat.invoke("Name a large animal.").content
    out["langchain_tools"] = chat.bind_tools([add], tool_choice="any").invoke("What is 4 + 5?").tool_calls[0]["args"]
    backend = radixlm.EngineBackend(radixlm.connect(endpoint, spawn=False, timeout=300))
    state = _fork_join_program().run(topic="forests", backend=backend)
    out["program"] = (state["nature"], state.text())
    return out


def test_adapters_and_programs_give_the_same_greedy_outputs_over_http_and_zeromq(engine):
    over_zmq = _run_everything(engine.endpoint)
    over_http = _run_everything(engine.url)
    assert over_http == over_zmq
    assert over_http["program"][0] in ("yes", "no") and over_http["dspy"]


def _sglang_frontend():
    """SGLang's pure-Python frontend from the cached sglang wheel (tests/sglang_wheel.py says which version,
    where, and how to fetch it), imported without its package __init__ (which loads the GPU runtime's
    patches)."""
    from sglang_wheel import FETCH_COMMAND, SGLANG_VERSION, WHEEL_DIR, sglang_wheel

    wheel = sglang_wheel()
    if wheel is None:
        pytest.skip(f"no sglang {SGLANG_VERSION} wheel in {WHEEL_DIR} ({FETCH_COMMAND})")
    if "sglang" not in sys.modules:
        package = types.ModuleType("sglang")
        package.__path__ = [str(wheel) + "/sglang"]
        sys.modules["sglang"] = package
    try:
        from sglang.lang import api
        from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
    except ImportError as exc:
        pytest.skip(f"SGLang's frontend does not import here without its runtime: {exc}")
    return api, RuntimeEndpoint


def test_sglang_runtime_endpoint_runs_a_fork_select_program(engine, zmq):
    sgl, RuntimeEndpoint = _sglang_frontend()

    @sgl.function
    def program(s):
        s += "Q: Is the sky blue? Answer yes or no.\nA: " + sgl.select("answer", choices=["yes", "no"]) + "\n"
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Reason {i + 1}:" + sgl.gen("reason", max_tokens=8, stop="\n")
        s += "Reasons:" + forks[0]["reason"] + " |" + forks[1]["reason"]

    state = program.run(backend=RuntimeEndpoint(engine.url), temperature=0)
    assert state["answer"] in ("yes", "no")
    head = f"Q: Is the sky blue? Answer yes or no.\nA: {state['answer']}\n"
    expected = [zmq.generate(head + f"Reason {i + 1}:", max_new_tokens=8, stop=["\n"]).text for i in range(2)]
    assert state.text() == head + "Reasons:" + expected[0] + " |" + expected[1]


def _running(zmq) -> int:
    stats = zmq.stats()
    return stats["running"] + stats["waiting"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_disconnected_http_client_aborts_its_request(engine, zmq, stream):
    body = {"model": "smollm2", "prompt": "Count forever: 1, 2, 3,", "max_tokens": 4000, "ignore_eos": True,
            "stream": stream}
    # Streaming answers once the first token is out; a plain request is given up on after 3 s.
    with httpx.Client(base_url=engine.url, timeout=httpx.Timeout(3.0, read=300.0 if stream else 3.0)) as http:
        if stream:
            with http.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()  # held: dropping a half-read body would close the connection
                first = next(lines)
                assert first.startswith("data: ") and '"error"' not in first, first
                assert _running(zmq) == 1
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/completions", json=body)
    deadline = time.monotonic() + 30
    while _running(zmq) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(zmq) == 0  # 4000 tokens would take minutes: the request was aborted
