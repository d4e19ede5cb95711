"""DSPy on a spawned radixlm engine serving SmolLM2-135M (issue 7). A 135M model is weak: these
tests check structure and mechanics (parsing, caching, tracing, concurrency), not answer quality."""

from __future__ import annotations

import asyncio
import uuid

import dspy
import pytest

from radixlm.adapters.dspy import LM, AsyncRadixEngine, ChatAdapter, JSONAdapter, RadixEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(smollm2_engine):
    return smollm2_engine


@pytest.fixture
def lm(client):
    return LM(client=client, cache=False, max_tokens=48, num_retries=0)


def _cached(entry) -> int:
    return (entry["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)


def test_lm_is_a_dspy_lm_on_the_engine_contract(lm):
    assert isinstance(lm, dspy.LM)
    assert isinstance(lm.engine, RadixEngine) and isinstance(lm._async_engine_spec, AsyncRadixEngine)
    assert lm.supports_response_schema and not lm.supports_function_calling
    assert {"temperature", "max_tokens", "stop", "seed", "logprobs", "response_format"} <= lm.supported_params
    out = lm("Say hello.", max_tokens=8, logprobs=True, top_logprobs=2)
    assert isinstance(out[0]["text"], str) and out[0]["text"]
    tokens = out[0]["logprobs"]["content"]
    assert 1 <= len(tokens) <= 8 and all(len(t["top_logprobs"]) == 2 for t in tokens)
    usage = lm.history[-1]["usage"]
    assert usage["completion_tokens"] == len(tokens) and usage["prompt_tokens"] > 5


def test_predict_and_chain_of_thought_with_chat_adapter(lm):
    with dspy.context(lm=lm, adapter=ChatAdapter()):
        pred = dspy.Predict("question -> answer")(question="What is the capital of France?")
        assert isinstance(pred.answer, str)
        cot = dspy.ChainOfThought("question -> answer")(question="What is 2 + 3?")
        assert isinstance(cot.reasoning, str) and isinstance(cot.answer, str)
    # the messages went to the engine as chat messages: a system prompt plus the user turn
    messages = lm.history[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"] and "answer" in messages[0]["content"]


class Facts(dspy.Signature):
    """Answer the question about the city."""

    city: str = dspy.InputField()
    country: str = dspy.OutputField()
    population_millions: float = dspy.OutputField()
    is_capital: bool = dspy.OutputField()


def test_json_adapter_sends_a_schema_and_its_output_parses(lm):
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = dspy.Predict(Facts)(city="Paris")
    assert isinstance(pred.country, str) and isinstance(pred.population_millions, float)
    assert isinstance(pred.is_capital, bool)
    schema = lm.history[-1]["kwargs"]["response_format"].model_json_schema()
    assert set(schema["properties"]) == {"country", "population_millions", "is_capital"}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression like '2 * 21'."""
    try:
        return str(eval(str(expression), {"__builtins__": {}}, {}))
    except Exception as exc:
        return f"error: {exc}"


def search(query: str) -> str:
    """Search the knowledge base for a topic."""
    return "The Eiffel Tower is 330 metres tall." if "eiffel" in str(query).lower() else "no result"


class AgentTask(dspy.Signature):
    """Answer the question. Look facts up with `search`, do arithmetic with `calculator`, and call
    `finish` as soon as the observations contain the answer."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def test_react_reuses_prefixes_and_carries_one_trace(client, lm):
    agent = dspy.ReAct(AgentTask, tools=[calculator, search], max_iters=2)
    lm = LM(client=client, cache=False, max_tokens=128, num_retries=0)
    before = client.stats()["traces"]
    with dspy.context(lm=lm, adapter=JSONAdapter(), track_usage=True):
        pred = agent(question="How tall is the Eiffel Tower in metres?")
    assert isinstance(pred.answer, str)
    steps = [k for k in pred.trajectory if k.startswith("tool_name_")]
    assert 1 <= len(steps) <= 2
    assert all(pred.trajectory[k] in ("calculator", "search", "finish") for k in steps)
    # every tool call got the arguments its tool takes: no observation is an argument error
    assert all("Execution error" not in str(v) for k, v in pred.trajectory.items() if k.startswith("observation_"))
    calls = lm.history[-(len(steps) + 1):]
    # every ReAct step after the first finds its prompt's prefix in the radix cache
    for entry in calls[1:-1]:
        assert _cached(entry) >= 0.8 * entry["usage"]["prompt_tokens"], entry["usage"]
    # DSPy's usage tracker sees the reuse
    usage = pred.get_lm_usage()["radixlm/smollm2"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= sum(_cached(e) for e in calls)
    # one new trace holds every call of the run
    new = {k: v for k, v in client.stats()["traces"].items() if k not in before}
    assert len(new) == 1
    (trace,) = new.values()
    assert trace["calls"] == len(calls)
    assert trace["prompt_tokens"] == sum(e["usage"]["prompt_tokens"] for e in calls)
    assert trace["cached_tokens"] == sum(_cached(e) for e in calls)


def test_acall_and_streamify(client, lm):
    predict = dspy.Predict("question -> answer")

    async def run():
        with dspy.context(lm=lm, adapter=JSONAdapter()):
            pred = await predict.acall(question="Name a color.")
            program = dspy.streamify(predict, async_streaming=True)
            chunks = [c async for c in program(question="Name an animal.")]
        return pred, chunks

    before = client.stats()["requests_finished"]
    pred, chunks = asyncio.run(run())
    assert isinstance(pred.answer, str)
    assert isinstance(chunks[-1], dspy.Prediction) and isinstance(chunks[-1].answer, str)
    streamed = [c for c in chunks if not isinstance(c, dspy.Prediction)]
    assert len(streamed) >= 2  # token chunks arrived before the prediction
    assert client.stats()["requests_finished"] - before >= 2


def test_batch_reaches_the_engine_concurrently(client):
    lm = LM(client=client, cache=False, max_tokens=12, num_retries=0)
    predict = dspy.Predict("question -> answer")
    examples = [dspy.Example(question=f"What is {i} plus {i}?").with_inputs("question") for i in range(16)]
    before = client.stats()
    with dspy.context(lm=lm, adapter=ChatAdapter(use_json_adapter_fallback=False)):
        results = predict.batch(examples, num_threads=16, max_errors=17, return_failed_examples=True)
    after = client.stats()
    calls = lm.history[-16:]
    assert len(lm.history) >= 16
    finished = after["requests_finished"] - before["requests_finished"]
    generated = after["generated_tokens"] - before["generated_tokens"]
    decode_passes = after["decode_passes"] - before["decode_passes"]
    assert finished >= 16 and generated >= 16 * 4
    # sequential runs need one decode pass per generated token (minus the first of each request);
    # batched requests share passes
    assert decode_passes < (generated - finished) / 2, (decode_passes, generated, finished)
    assert len(results[0]) == 16  # one slot per example (None where the 135M reply did not parse)
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


def test_tools_are_refused_rather_than_ignored(lm):
    from dspy.lm15 import FunctionTool, Message, Request

    request = Request(model=lm.model, messages=(Message.user("hi"),),
                      tools=(FunctionTool(name="f", description="d", parameters={"type": "object"}),))
    with pytest.raises(Exception, match="tools"):
        lm(request)
