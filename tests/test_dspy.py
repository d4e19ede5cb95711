"""DSPy on a spawned radixlm engine serving SmolLM2-135M, the way DSPy users write it:
`dspy.configure(lm=LM(...))` and DSPy's default adapter. A 135M model is weak: these tests check that
every reply parses on the first call (the grammar of the adapter in use), tool calling, caching,
tracing, saving and concurrency, not answer quality."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Literal

import dspy
import pydantic
import pytest

from radixlm.adapters.dspy import LM, AsyncRadixEngine, RadixEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(smollm2_engine):
    return smollm2_engine


@pytest.fixture
def lm(client):
    return LM(client=client, cache=False, max_tokens=48, num_retries=0)


def _cached(entry) -> int:
    return (entry["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def one_call_per_step(lm: dspy.LM, steps: int) -> Iterator[None]:
    """Asserts that the block made exactly `steps` LM calls (no parse failure and fallback retry),
    each ending by itself (finish reason stop), and that DSPy warned about nothing (no truncation)."""
    records = _Records()
    logger = logging.getLogger("dspy")  # DSPy's loggers do not propagate to the root logger
    logger.addHandler(records)
    before = len(lm.history)
    try:
        yield
    finally:
        logger.removeHandler(records)
    calls = lm.history[before:]
    assert len(calls) == steps, [c["outputs"] for c in calls]
    assert records.messages == []
    assert all(c["usage"]["completion_tokens"] < c["kwargs"].get("max_tokens", lm.kwargs["max_tokens"])
               for c in calls), [c["outputs"] for c in calls]


def test_lm_is_a_dspy_lm_on_the_engine_contract(lm):
    assert isinstance(lm, dspy.LM)
    assert isinstance(lm.engine, RadixEngine) and isinstance(lm._async_engine_spec, AsyncRadixEngine)
    assert lm.supports_response_schema and lm.supports_function_calling
    assert {"temperature", "max_tokens", "stop", "seed", "logprobs", "response_format"} <= lm.supported_params
    out = lm("Say hello.", max_tokens=8, logprobs=True, top_logprobs=2)
    assert isinstance(out[0]["text"], str) and out[0]["text"]
    tokens = out[0]["logprobs"]["content"]
    assert 1 <= len(tokens) <= 8 and all(len(t["top_logprobs"]) == 2 for t in tokens)
    usage = lm.history[-1]["usage"]
    assert usage["completion_tokens"] == len(tokens) and usage["prompt_tokens"] > 5


def test_predict_and_chain_of_thought_parse_the_first_reply_with_the_default_adapter(lm):
    with dspy.context(lm=lm), one_call_per_step(lm, 2):
        pred = dspy.Predict("question -> answer")(question="What is the capital of France?")
        cot = dspy.ChainOfThought("question -> answer: int")(question="What is 2 + 3?")
    assert isinstance(pred.answer, str) and pred.answer
    assert isinstance(cot.reasoning, str) and isinstance(cot.answer, int)
    # the messages went to the engine as chat messages: ChatAdapter's system prompt plus the user turn
    messages = lm.history[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"] and "[[ ## answer ## ]]" in messages[0]["content"]
    assert lm.history[-1]["outputs"][0].startswith("[[ ## reasoning ## ]]\n")


class Place(pydantic.BaseModel):
    city: str
    country: str


class Describe(dspy.Signature):
    """Describe the text."""

    text: str = dspy.InputField()
    sentiment: Literal["positive", "negative", "neutral"] = dspy.OutputField()
    words: int = dspy.OutputField()
    is_question: bool = dspy.OutputField()
    keywords: list[str] = dspy.OutputField()
    place: Place = dspy.OutputField()


@pytest.mark.parametrize("adapter", [None, dspy.JSONAdapter()], ids=["default", "json"])
def test_typed_outputs_parse_the_first_reply(client, adapter):
    lm = LM(client=client, cache=False, max_tokens=96, num_retries=0)
    with dspy.context(lm=lm, adapter=adapter), one_call_per_step(lm, 1):
        pred = dspy.Predict(Describe)(text="I love Paris in France!")
    assert pred.sentiment in ("positive", "negative", "neutral")
    assert isinstance(pred.words, int) and isinstance(pred.is_question, bool)
    assert isinstance(pred.keywords, list) and all(isinstance(k, str) for k in pred.keywords)
    assert isinstance(pred.place, Place)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression like '2 * 21'."""
    from radixlm.demo.tools import calculator as evaluate

    return evaluate(expression)


def search(query: str) -> str:
    """Search the knowledge base for a topic."""
    return "The Eiffel Tower is 330 metres tall." if "eiffel" in str(query).lower() else "no result"


@pytest.mark.parametrize("adapter", [None, dspy.JSONAdapter()], ids=["default", "json"])
def test_react_steps_parse_first_time_reuse_prefixes_and_carry_one_trace(client, adapter):
    agent = dspy.ReAct("question -> answer", tools=[calculator, search], max_iters=2)
    lm = LM(client=client, cache=False, max_tokens=64, num_retries=0)
    before = client.stats()["traces"]
    with dspy.context(lm=lm, adapter=adapter, track_usage=True):
        start = len(lm.history)
        pred = agent(question="How tall is the Eiffel Tower in metres?")
    steps = [k for k in pred.trajectory if k.startswith("tool_name_")]
    calls = lm.history[start:]
    assert len(calls) == len(steps) + 1  # one call per ReAct step, then the extract call
    assert all(c["usage"]["completion_tokens"] < 64 for c in calls)
    assert isinstance(pred.answer, str)
    assert all(pred.trajectory[k] in ("calculator", "search", "finish") for k in steps)
    # every tool call got the arguments its tool takes: no observation is an argument error
    assert all("Execution error" not in str(v) for k, v in pred.trajectory.items() if k.startswith("observation_"))
    # every ReAct step after the first finds its prompt's prefix in the radix cache
    for entry in calls[1:-1]:
        # the share depends on the adapter's prompt layout (JSONAdapter re-renders more of the previous
        # step: 79.7% here); the exact engine property is `recomputed_tokens == 0` below
        assert _cached(entry) >= 0.75 * entry["usage"]["prompt_tokens"], entry["usage"]
    usage = pred.get_lm_usage()["radixlm/smollm2"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= sum(_cached(e) for e in calls)
    new = {k: v for k, v in client.stats()["traces"].items() if k not in before}
    assert len(new) == 1
    (trace,) = new.values()
    assert trace["calls"] == len(calls)
    assert trace["prompt_tokens"] == sum(e["usage"]["prompt_tokens"] for e in calls)
    assert trace["recomputed_tokens"] == 0  # no call recomputed what an earlier call of the trace computed
    assert trace["cached_tokens"] == sum(_cached(e) for e in calls)


class ToolUse(dspy.Signature):
    """Answer the question using the tools."""

    question: str = dspy.InputField()
    tools: list[dspy.Tool] = dspy.InputField()
    history: dspy.History = dspy.InputField()
    answer: str = dspy.OutputField()
    tool_calls: dspy.ToolCalls = dspy.OutputField()


def test_native_function_calling_returns_tool_calls_and_takes_their_results(client):
    lm = LM(client=client, cache=False, max_tokens=48, num_retries=0)
    tools = [dspy.Tool(calculator), dspy.Tool(search)]
    predict = dspy.Predict(ToolUse)
    question = "What is 12 times 34? Use the calculator."
    adapter = dspy.ChatAdapter(use_native_function_calling=True)
    with dspy.context(lm=lm, adapter=adapter), one_call_per_step(lm, 1):
        first = predict(question=question, tools=tools, history=dspy.History(messages=[]),
                        config={"tool_choice": "required"})
    request = lm.history[-1]
    assert request["kwargs"]["tools"][0]["function"]["name"] == "calculator"
    (call,) = first.tool_calls.tool_calls
    assert call.name in ("calculator", "search") and set(call.args) == set(dspy.Tool(globals()[call.name]).args)
    result = call.execute(functions=tools)
    assert result and "Execution error" not in result
    # the call and its result go back in the history; the model may now answer or call again
    turn = {"question": question, "tool_calls": dspy.ToolCalls(
        tool_calls=first.tool_calls.tool_calls,
        tool_call_results=[{"call_id": call.id, "name": call.name, "value": result}])}
    with dspy.context(lm=lm, adapter=adapter), one_call_per_step(lm, 1):
        second = predict(question=question, tools=tools, history=dspy.History(messages=[turn]))
    sent = lm.history[-1]["messages"]
    assert [m["role"] for m in sent][-3:] == ["assistant", "tool", "user"]
    assert sent[-2]["content"] == result
    later = second.tool_calls.tool_calls if second.tool_calls else []
    if not later:  # no further call: then it answered
        assert isinstance(second.answer, str) and second.answer
    for again in later:  # a further call is a valid one
        assert again.name in ("calculator", "search") and set(again.args) == set(dspy.Tool(globals()[again.name]).args)


def test_programs_holding_the_lm_save_and_load(client, tmp_path):
    lm = LM(client=client, cache=False, max_tokens=24, num_retries=0)
    program = dspy.Predict("question -> answer")
    program.lm = lm
    program.demos = [dspy.Example(question="2 + 2?", answer="4")]
    path = tmp_path / "program.json"
    program.save(str(path))
    loaded = dspy.Predict("question -> answer")
    loaded.load(str(path), allow_unsafe_lm_state=True)
    assert isinstance(loaded.lm.engine, RadixEngine) and loaded.lm.engine.endpoint == lm.engine.endpoint
    assert loaded.demos[0]["answer"] == "4"
    try:
        assert isinstance(loaded(question="3 + 3?").answer, str)
    finally:
        loaded.lm.engine.close()


def test_acall_and_streamify(client, lm):
    predict = dspy.Predict("question -> answer")

    async def run():
        with dspy.context(lm=lm):
            pred = await predict.acall(question="Name a color.")
            program = dspy.streamify(predict, async_streaming=True)
            chunks = [c async for c in program(question="Name an animal.")]
        return pred, chunks

    before = client.stats()["requests_finished"]
    pred, chunks = asyncio.run(run())
    assert isinstance(pred.answer, str) and pred.answer
    assert isinstance(chunks[-1], dspy.Prediction) and isinstance(chunks[-1].answer, str)
    streamed = [c for c in chunks if not isinstance(c, dspy.Prediction)]
    assert len(streamed) >= 2  # token chunks arrived before the prediction
    assert client.stats()["requests_finished"] - before == 2  # one call each: both first replies parsed


def test_batch_reaches_the_engine_concurrently(client):
    lm = LM(client=client, cache=False, max_tokens=32, num_retries=0)  # room for ChatAdapter's markup
    predict = dspy.Predict("question -> answer")
    examples = [dspy.Example(question=f"What is {i} plus {i}?").with_inputs("question") for i in range(16)]
    before = client.stats()
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        results = predict.batch(examples, num_threads=16, max_errors=0)
    after = client.stats()
    calls = lm.history[-16:]
    assert len(lm.history) == 16 and all(isinstance(r.answer, str) for r in results)  # every reply parsed
    finished = after["requests_finished"] - before["requests_finished"]
    generated = after["generated_tokens"] - before["generated_tokens"]
    decode_passes = after["decode_passes"] - before["decode_passes"]
    assert finished == 16 and len(results) == 16
    # at least 4 output tokens a reply; the markup the grammar forces is computed by jump-forward
    # extends, so the engine's sampled (`generated`) count is the smaller part of it
    assert sum(c["usage"]["completion_tokens"] for c in calls) >= 16 * 4 and generated > finished
    assert all(c["usage"]["completion_tokens"] < 32 for c in calls)  # each reply ended by itself
    assert all("[[" not in r.answer for r in results)  # ...so no field swallowed a cut-off marker
    # sequential runs need one decode pass per generated token (minus the first of each request);
    # batched requests share passes
    assert decode_passes < (generated - finished) / 2, (decode_passes, generated, finished)
    # the 16 prompts share the signature's system prompt through the radix cache
    assert sum(_cached(e) > 0 for e in calls) >= 8


def test_dspy_cache_answers_repeats_without_the_engine(client):
    lm = LM(client=client, cache=True, max_tokens=8)
    question = f"Repeat this id: {uuid.uuid4().hex[:8]}"
    first = lm(question)
    before = client.stats()["requests_finished"]
    second = lm(question)
    assert second == first
    assert client.stats()["requests_finished"] == before
    third = lm(question, max_tokens=9)  # a different request does reach the engine
    assert client.stats()["requests_finished"] == before + 1 and isinstance(third[0], str)
