"""LangChain's standard unit tests for ChatRadixLM plus the adapter's own engine-free checks:
constructing a model never connects; messages, tool grammars and replies convert as documented."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_tests.unit_tests import ChatModelUnitTests

from radixlm.adapters import langchain_common
from radixlm.adapters.langchain import ChatRadixLM, RadixLLM
from radixlm.adapters.langchain_tools import parse_reply, to_engine_messages, tool_call_grammar, tools_prompt

UNUSED = "ipc:///nonexistent/radixlm-unit-test.sock"


class TestChatRadixLMUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatRadixLM]:
        return ChatRadixLM

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2", "endpoint": UNUSED}


def test_constructing_models_does_not_connect():
    ChatRadixLM(endpoint=UNUSED)
    RadixLLM(endpoint=UNUSED)
    assert (UNUSED, "smollm2") not in langchain_common._clients


def test_messages_render_as_chat_turns_with_tool_calls_as_json():
    ai = AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}])
    out = to_engine_messages([SystemMessage("sys"), HumanMessage([{"type": "text", "text": "hi"}]), ai,
                              ToolMessage("3", tool_call_id="c1"), ToolMessage("bad", tool_call_id="c2", status="error")],
                             tools_prompt="TOOLS")
    assert out == [{"role": "system", "content": "sys\n\nTOOLS"}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": '{"name": "add", "arguments": {"a": 1, "b": 2}}'},
                   {"role": "tool", "content": "3"}, {"role": "tool", "content": "Error: bad"}]
    with pytest.raises(ValueError, match="text-only"):
        to_engine_messages([HumanMessage([{"type": "image", "url": "http://x/y.png"}])])


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Inner(BaseModel):
    x: str


class Outer(BaseModel):
    """Nested model."""

    inner: Inner


def test_tool_grammar_covers_each_tool_and_the_answer_only_for_auto():
    tools = [convert_to_openai_tool(add), convert_to_openai_tool(Outer)]
    auto = tool_call_grammar(tools, "auto")
    assert [b["properties"].get("name", {}).get("const") for b in auto["anyOf"]] == ["add", "Outer", None]
    inner = auto["anyOf"][1]["properties"]["arguments"]["properties"]["inner"]
    assert inner["properties"]["x"]["maxLength"] == 100 and inner["additionalProperties"] is False
    raw = {"type": "function", "function": {"name": "raw", "parameters": {
        "type": "object", "properties": {"i": {"$ref": "#/$defs/I"}}, "$defs": {"I": {"type": "integer"}}}}}
    hoisted = tool_call_grammar([raw], "any")
    assert hoisted["properties"]["arguments"]["properties"]["i"] == {"$ref": "#/$defs/t0_I"}
    assert hoisted["$defs"] == {"t0_I": {"type": "integer"}}
    assert auto["anyOf"][2]["required"] == ["answer"]
    assert len(tool_call_grammar(tools, "any")["anyOf"]) == 2
    named = tool_call_grammar(tools, "add")
    assert named["properties"]["name"] == {"const": "add"} and named["additionalProperties"] is False
    with pytest.raises(ValueError):
        tool_call_grammar(tools, "nope")
    assert "answer" in tools_prompt(tools, "auto") and "answer" not in tools_prompt(tools, "any")


def test_replies_parse_into_tool_calls_or_answers():
    content, calls, invalid = parse_reply('{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert content == "" and calls[0]["name"] == "add" and calls[0]["args"] == {"a": 1, "b": 2} and not invalid
    assert parse_reply('{"answer": "hi \\"there\\""}')[0] == 'hi "there"'
    assert parse_reply('{"answer": "cut sho')[0] == "cut sho"
    assert parse_reply('{"name": "add", "argu')[2][0]["type"] == "invalid_tool_call"


def test_bind_tools_normalises_tool_choice():
    llm = ChatRadixLM(endpoint=UNUSED)
    assert llm.bind_tools([add], tool_choice="required").kwargs["tool_choice"] == "any"
    assert llm.bind_tools([add], tool_choice={"type": "function", "function": {"name": "add"}}).kwargs["tool_choice"] == "add"
    with pytest.raises(ValueError):
        llm.bind_tools([add], tool_choice="other")


def test_trace_id_is_the_root_run_of_the_tree():
    from langchain_core.runnables import RunnableLambda

    seen = []

    class Spy(ChatRadixLM):
        def _generate(self, messages, stop=None, run_manager=None, **kw):
            seen.append((langchain_common.trace_id_for(run_manager), run_manager.parent_run_id))
            raise RuntimeError("stop here")

    inner = RunnableLambda(lambda x: Spy(endpoint=UNUSED).invoke(x))
    outer = RunnableLambda(lambda x: inner.invoke(x))
    with pytest.raises(RuntimeError):
        outer.invoke("hi", config={"run_id": __import__("uuid").UUID(int=7)})
    trace, parent = seen[0]
    assert trace == str(__import__("uuid").UUID(int=7)) and parent != __import__("uuid").UUID(int=7)
