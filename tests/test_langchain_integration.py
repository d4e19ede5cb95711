"""ChatRadixLM / RadixLLM against a real engine on SmolLM2: LangChain's standard integration tests plus
grammar-constrained tool calls, structured output, prefix reuse in a tool loop, batching, and the agents
of examples/langchain_react.py."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from pydantic import BaseModel, Field

import radixlm
from radixlm.adapters.langchain import ChatRadixLM, RadixLLM
from radixlm.adapters.langchain_common import forget_client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(smollm2_engine):
    yield smollm2_engine.conn.endpoint
    forget_client(smollm2_engine.conn.endpoint, "smollm2")


@pytest.fixture(scope="module")
def client(endpoint):
    return radixlm.connect(endpoint, spawn=False, timeout=300)


class TestChatRadixLMStandard(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _endpoint(self, endpoint):
        type(self)._ep = endpoint

    @property
    def chat_model_class(self):
        return ChatRadixLM

    @property
    def chat_model_params(self):
        return {"model": "smollm2", "endpoint": self._ep, "max_tokens": 32}

    @property
    def supports_json_mode(self):
        return True

    @pytest.mark.xfail(reason="json_mode constrains the reply to *a* JSON object and leaves its keys to the prompt; "
                              "SmolLM2-135M does not follow key instructions. Use method='json_schema' (the default).",
                       strict=False)
    def test_json_mode(self, model):
        super().test_json_mode(model)


@tool
def add(a: int, b: int) -> int:
    """Add two integers a and b."""
    return a + b


@tool
def search(query: str, limit: int = 3) -> str:
    """Search the local knowledge base for a query; return at most `limit` results."""
    return f"No results for {query}."


@tool
def convert(value: float, unit: Literal["feet", "pounds", "miles", "fahrenheit"]) -> str:
    """Convert a value to the given unit."""
    return f"{value} {unit}"


TOOLS = {t.name: t for t in (add, search, convert)}
PROMPTS = ["What is 2 plus 3?", "Find documents about whales.", "Convert 5 meters to feet.", "Hello there!",
           "Who wrote Hamlet?", "Add 10 and 32.", "Search for the capital of Peru.", "What is 7 kilograms in pounds?",
           "Tell me a joke.", "Sum 1 and 1 please.", "How hot is 30 celsius in fahrenheit?", "What is 123 + 456?",
           "Look up the history of Rome.", "Ten kilometres in miles?", "Give me 3 results about cats.",
           "", "Add minus four and nine.", "Search: \"quoted\" text & symbols {}", "1e3 pounds", "What time is it?"]


async def test_tool_calls_always_parse_with_valid_arguments(endpoint):
    """20 prompts x 3 tools, each tool forced by name, plus the model's own pick among all three: every
    reply is exactly one call whose arguments validate against its tool and run it."""
    llm = ChatRadixLM(endpoint=endpoint, max_tokens=64)
    jobs = [(name, llm.bind_tools(list(TOOLS.values()), tool_choice=name), p) for name in TOOLS for p in PROMPTS]
    jobs += [(None, llm.bind_tools(list(TOOLS.values()), tool_choice="any"), p) for p in PROMPTS]
    replies = await asyncio.gather(*(bound.ainvoke(p) for _, bound, p in jobs))
    for (forced, _, prompt), reply in zip(jobs, replies):
        assert len(reply.tool_calls) == 1 and not reply.invalid_tool_calls, (prompt, reply)
        call = reply.tool_calls[0]
        assert call["name"] == (forced or call["name"]) and reply.response_metadata["finish_reason"] == "tool_calls"
        TOOLS[call["name"]].args_schema.model_validate(call["args"])  # raises when the arguments are invalid
        assert isinstance(TOOLS[call["name"]].invoke(call), ToolMessage)


def test_named_tool_choice_and_auto(endpoint):
    llm = ChatRadixLM(endpoint=endpoint, max_tokens=64)
    reply = llm.bind_tools([add, search, convert], tool_choice="search").invoke("What is 2 plus 3?")
    assert [c["name"] for c in reply.tool_calls] == ["search"]
    reply = llm.bind_tools([add, search, convert], tool_choice="auto").invoke("Say hello.")
    assert reply.tool_calls or isinstance(reply.content, str) and reply.content


class City(BaseModel):
    name: str = Field(description="the city's name", max_length=30)
    population: int


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_is_a_valid_object(endpoint, method):
    llm = ChatRadixLM(endpoint=endpoint, max_tokens=64)
    city = llm.with_structured_output(City, method=method).invoke("Describe Paris.")
    assert isinstance(city, City)


@pytest.mark.parametrize("strategy", ["ToolStrategy", "ProviderStrategy"])
def test_create_agent_structured_response(endpoint, strategy):
    """`create_agent` with a response format: ToolStrategy binds it as a tool with tool_choice="any",
    ProviderStrategy as an OpenAI-style `response_format` next to the tools; both yield a valid object."""
    agents = pytest.importorskip("langchain.agents")
    from langchain.agents import structured_output

    agent = agents.create_agent(ChatRadixLM(endpoint=endpoint, max_tokens=64), [search],
                                response_format=getattr(structured_output, strategy)(City))
    state = agent.invoke({"messages": [HumanMessage("Describe Paris.")]}, {"recursion_limit": 8})
    assert isinstance(state["structured_response"], City)


def test_tool_loop_reuses_the_cached_prefix(endpoint):
    llm = ChatRadixLM(endpoint=endpoint, max_tokens=64).bind_tools([add, search, convert], tool_choice="any")
    messages = [HumanMessage("Add 1 and 2, then keep adding.")]
    ratios = []
    for step in range(5):
        reply = llm.invoke(messages)
        usage = reply.usage_metadata
        if step:
            ratios.append(usage["input_token_details"]["cache_read"] / usage["input_tokens"])
        call = reply.tool_calls[0]
        messages += [reply, ToolMessage(str({"add": add, "search": search, "convert": convert}[call["name"]].invoke(call["args"])),
                                        tool_call_id=call["id"])]
    assert all(r >= 0.8 for r in ratios), ratios


def test_llm_batch_reaches_the_engine_as_one_batch(endpoint, client):
    """`BaseLLM.batch` hands all 16 prompts to `_generate` at once, which sends them together: the engine
    prefills them in a few passes and decodes them side by side. Sent one at a time, each prompt would
    take its own prefill pass and its own decode passes (one token per pass)."""
    llm = RadixLLM(endpoint=endpoint, max_tokens=8)
    keys = ("requests_finished", "extend_passes", "decode_passes", "generated_tokens")
    before = client.stats()
    texts = llm.batch([f"Question {i}: what is {i} + {i}?" for i in range(16)], ignore_eos=True)
    after = client.stats()
    delta = {k: after[k] - before[k] for k in keys}
    assert len(texts) == 16 and all(isinstance(t, str) and t for t in texts)
    assert delta["requests_finished"] == 16 and delta["generated_tokens"] == 16 * 8, delta
    assert delta["extend_passes"] <= 4, delta
    assert delta["generated_tokens"] >= 4 * delta["decode_passes"], delta


def test_llm_generation_info_has_logprobs(endpoint):
    result = RadixLLM(endpoint=endpoint, max_tokens=4, logprobs=True).generate(["Hello", "Bye"])
    for (g,) in result.generations:
        assert len(g.generation_info["logprobs"]["content"]) == g.generation_info["completion_tokens"] > 0


def _load_example(filename: str):
    """Import examples/<filename> as a module (the examples folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "examples" / filename
    spec = importlib.util.spec_from_file_location(Path(filename).stem + "_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("agent, question", [("react_core", "How tall is the Eiffel Tower in feet?"),
                                             ("react_agent", "How long is the Great Wall of China in miles?")])
def test_example_agents_call_tools_answer_and_reuse_the_cache(endpoint, client, agent, question):
    """The example's two agents (langchain-core loop, `create_agent`): they call tools, answer by the last
    step, every later step finds >= 80% of its prompt cached, and all calls of a run share one trace."""
    if agent == "react_agent":
        pytest.importorskip("langchain.agents")
    example = _load_example("langchain_react.py")
    traces_before = set(client.stats()["traces"])
    messages = getattr(example, agent)(ChatRadixLM(endpoint=endpoint, max_tokens=64), question, max_steps=3)
    steps = [m for m in messages if isinstance(m, AIMessage)]
    assert steps[0].tool_calls and not steps[-1].tool_calls and steps[-1].content and len(steps) <= 3
    assert sum(isinstance(m, ToolMessage) for m in messages) == sum(len(s.tool_calls) for s in steps)
    assert all(r >= 0.8 for r in example.cache_reuse(messages)[1:]), example.cache_reuse(messages)
    new_traces = {k: v for k, v in client.stats()["traces"].items() if k not in traces_before}
    assert [t["calls"] for t in new_traces.values()] == [len(steps)], new_traces


def test_streaming_under_a_grammar_yields_as_it_decodes(endpoint):
    """A forced tool call streams its name, then its arguments in several pieces; a structured reply
    streams partial objects; a tool-grammar answer streams its text. The summed stream carries usage."""
    llm = ChatRadixLM(endpoint=endpoint, max_tokens=32)
    chunks = list(llm.bind_tools([search], tool_choice="search").stream("Find documents about whales."))
    early = [c for c in chunks[:-1] if c.tool_call_chunks]
    assert len(early) > 1 and early[0].tool_call_chunks[0]["name"] == "search", chunks
    full = sum(chunks[1:], chunks[0])
    assert full.tool_calls[0]["name"] == "search" and "query" in full.tool_calls[0]["args"]
    assert full.usage_metadata["output_tokens"] > 0 and full.response_metadata["finish_reason"] == "tool_calls"
    partial = list(llm.with_structured_output(City).stream("Describe Paris."))
    assert len(partial) > 1 and City.model_validate(partial[-1].model_dump())
    texts = [c.content for c in llm.bind_tools([search], tool_choice="none").stream("Say hello.")][:-1]
    assert sum(bool(t) for t in texts) > 1, texts


def test_create_agent_uses_several_tools_over_several_steps(endpoint, client):
    """examples/langchain_agent.py: `create_agent` with three tools (search, unit_factor, calculator)
    and a middleware that makes the 4th model call answer: the agent calls at least two different
    tools over at least two steps, each with valid arguments, then answers; all its calls are one
    engine trace whose later steps find >= 80% of their prompt cached."""
    pytest.importorskip("langchain.agents")
    example = _load_example("langchain_agent.py")
    traces_before = set(client.stats()["traces"])
    messages = example.run(ChatRadixLM(endpoint=endpoint, max_tokens=48), "How tall is the Eiffel Tower in feet?",
                           max_steps=4)
    steps = [m for m in messages if isinstance(m, AIMessage)]
    calls = [c for s in steps for c in s.tool_calls]
    assert sum(bool(s.tool_calls) for s in steps) >= 2 and len({c["name"] for c in calls}) >= 2, calls
    tools = {t.name: t for t in example.TOOLS}
    for call in calls:
        tools[call["name"]].args_schema.model_validate(call["args"])
    assert not steps[-1].tool_calls and steps[-1].content and len(steps) <= 4
    results = [m.content for m in messages if isinstance(m, ToolMessage)]
    assert len(results) == len(calls) and "330 metres" in results[0], results
    for s in steps[1:]:
        assert s.usage_metadata["input_token_details"]["cache_read"] >= 0.8 * s.usage_metadata["input_tokens"]
    new_traces = {k: v for k, v in client.stats()["traces"].items() if k not in traces_before}
    assert [t["calls"] for t in new_traces.values()] == [len(steps)], new_traces
