"""ChatRadixLM / RadixLLM against a real engine on SmolLM2: LangChain's standard integration tests plus
grammar-constrained tool calls, structured output, prefix reuse in a tool loop, and batching."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from pydantic import BaseModel, Field

import radixlm
from radixlm.adapters.langchain import ChatRadixLM, RadixLLM
from radixlm.adapters.langchain_common import forget_client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    ep = f"ipc://{tmp_path_factory.mktemp('lc') / 'engine.sock'}"
    client = radixlm.connect(ep, model="smollm2", timeout=300)
    yield ep
    client.shutdown()
    forget_client(ep, "smollm2")


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
def search(query: str) -> str:
    """Search the local knowledge base for a query."""
    return f"No results for {query}."


@tool
def convert(value: float, unit: str) -> str:
    """Convert a value to the given unit."""
    return f"{value} {unit}"


PROMPTS = ["What is 2 plus 3?", "Find documents about whales.", "Convert 5 meters to feet.", "Hello there!",
           "Who wrote Hamlet?", "Add 10 and 32.", "Search for the capital of Peru.", "What is 7 kilograms in pounds?",
           "Tell me a joke.", "Sum 1 and 1 please."]


def test_tool_calls_always_parse_with_valid_arguments(endpoint):
    llm = ChatRadixLM(endpoint=endpoint, max_tokens=64).bind_tools([add, search, convert], tool_choice="any")
    schemas = {t.name: t.args_schema for t in (add, search, convert)}
    replies = llm.batch(PROMPTS)
    for reply in replies:
        assert len(reply.tool_calls) == 1 and not reply.invalid_tool_calls
        call = reply.tool_calls[0]
        schemas[call["name"]].model_validate(call["args"])  # raises when the arguments are invalid


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
    llm = RadixLLM(endpoint=endpoint, max_tokens=8, logprobs=True)
    before = client.stats()["extend_passes"]
    result = llm.generate([f"Question {i}: what is {i} + {i}?" for i in range(16)])
    passes = client.stats()["extend_passes"] - before
    assert len(result.generations) == 16
    assert all(g[0].generation_info["logprobs"]["content"] for g in result.generations)
    assert passes <= 4, passes
