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
from radixlm.adapters.langchain_stream import ReplyReader
from radixlm.adapters.langchain_tools import (parse_reply, text_answer_schema, tighten, to_engine_messages,
                                              tool_call_grammar)
from radixlm.client import Result, StreamChunk

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


@tool("search")
def search_tool(query: str, limit: list) -> str:
    """Search for a query."""
    return query


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
    assert hoisted["$defs"] == {"t0_I": {"type": "integer", "minimum": -(2**53 - 1), "maximum": 2**53 - 1}}
    assert tighten({"type": "integer", "exclusiveMinimum": 0}) == {"type": "integer", "exclusiveMinimum": 0,
                                                                   "maximum": 2**53 - 1}
    assert auto["anyOf"][2]["required"] == ["answer"]
    assert len(tool_call_grammar(tools, "any")["anyOf"]) == 2
    named = tool_call_grammar(tools, "add")
    assert named["properties"]["name"] == {"const": "add"} and named["additionalProperties"] is False
    with pytest.raises(ValueError):
        tool_call_grammar(tools, "nope")
    assert tool_call_grammar(tools, "none") == text_answer_schema()
    assert tool_call_grammar(tools, "auto", answer=text_answer_schema(40))["anyOf"][2]["properties"]["answer"] == \
        {"type": "string", "minLength": 1, "maxLength": 40}


def test_replies_parse_into_tool_calls_or_answers():
    content, calls, invalid = parse_reply('{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert content == "" and calls[0]["name"] == "add" and calls[0]["args"] == {"a": 1, "b": 2} and not invalid
    assert parse_reply('{"answer": "hi \\"there\\""}')[0] == 'hi "there"'
    assert parse_reply('{"answer": "cut sho')[0] == "cut sho"
    assert parse_reply('{"name": "add", "argu')[2][0]["type"] == "invalid_tool_call"
    city = '{"name": "Paris", "population": 2}'
    assert parse_reply(city, json_answer=True) == (city, [], [])


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


class FakeClient:
    """Records what the adapter sends and replies with canned text."""

    def __init__(self, reply: str) -> None:
        self.reply, self.sent = reply, []

    def generate(self, prompt, **opts):
        self.sent.append((prompt, opts))
        return Result(text=self.reply, output_ids=[], finish_reason="stop", prompt_tokens=10, cached_tokens=8,
                      completion_tokens=3)


def fake_model(monkeypatch, reply: str, **params) -> tuple[ChatRadixLM, FakeClient]:
    client = FakeClient(reply)
    monkeypatch.setattr(ChatRadixLM, "_client", lambda self: client)
    return ChatRadixLM(endpoint=UNUSED, **params), client


def test_tool_choice_keeps_the_prompt_and_none_forces_a_short_answer(monkeypatch):
    llm, client = fake_model(monkeypatch, '{"answer": "five"}', max_tokens=16)
    assert llm.bind_tools([add], tool_choice="none").invoke("2 + 3?").content == "five"
    llm.bind_tools([add], tool_choice="any").invoke("2 + 3?")
    (none_prompt, none_opts), (any_prompt, any_opts) = client.sent
    assert none_prompt == any_prompt  # the cached prefix survives a change of tool_choice
    assert none_opts["json_schema"] == text_answer_schema(64) and none_opts["max_new_tokens"] == 16
    assert any_opts["max_new_tokens"] == llm.tool_max_tokens


def test_response_format_is_the_answer_schema_next_to_the_tools(monkeypatch):
    llm, client = fake_model(monkeypatch, '{"name": "Paris", "population": 2}')
    fmt = {"type": "json_schema", "json_schema": {"name": "City", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"}}}}}
    reply = llm.bind_tools([add], response_format=fmt).invoke("Paris?")
    assert json.loads(reply.content) == {"name": "Paris", "population": 2} and not reply.tool_calls
    answer = client.sent[0][1]["json_schema"]["anyOf"][1]
    assert answer["properties"]["name"] == {"type": "string", "maxLength": 100}
    llm.bind(response_format={"type": "json_object"}).invoke("Paris?")
    assert client.sent[1][1]["json_schema"] == {"type": "object"}


def read_in_pieces(reply: str, size: int, tools=("add", "search"), json_answer: bool = False):
    """Feed `reply` to a ReplyReader `size` characters at a time; (pieces, joined content, joined args)."""
    reader = ReplyReader(list(tools), json_answer)
    pieces = [reader.feed(reply[i:i + size]) for i in range(0, len(reply), size)]
    chunks = [c for p in pieces for c in p.tool_call_chunks]
    return reader, pieces, "".join(p.content for p in pieces), chunks


CALL = '{"name": "search", "arguments": {"query": "a \\"b\\" {c}", "limit": [1, {"x": 2}]}}'


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_reader_streams_a_call_as_name_then_partial_arguments(size):
    reader, pieces, content, chunks = read_in_pieces(CALL, size)
    assert reader.called and content == ""
    assert chunks[0]["name"] == "search" and chunks[0]["id"].startswith("call_")
    assert all(c["name"] is None and c["id"] is None and c["index"] == 0 for c in chunks[1:])
    assert all(len(p.tool_call_chunks) <= 1 for p in pieces)  # LangChain merges chunks across messages only
    assert json.loads("".join(c["args"] for c in chunks)) == parse_reply(CALL)[1][0]["args"]
    if size < 10:
        assert len(chunks) > 3  # the arguments arrive piece by piece, not at the end
    else:
        assert len(chunks) == 1 and chunks[0]["args"] == CALL[len('{"name": "search", "arguments": '):-1]


@pytest.mark.parametrize("size", [1, 2, 5, 100])
def test_reader_decodes_the_answer_text_as_it_arrives(size):
    reply = '{"answer": "caf\\u00e9 \\"q\\" \\ud83d\\ude00 \\\\ end"}'
    reader, pieces, content, chunks = read_in_pieces(reply, size)
    assert not reader.called and not chunks and content == parse_reply(reply)[0] == 'café "q" 😀 \\ end'
    assert all("\ud83d" not in p.content for p in pieces)  # half a surrogate pair is never sent
    cut = '{"answer": "cut sh'
    assert read_in_pieces(cut, size)[2] == parse_reply(cut)[0] == "cut sh"


def test_reader_streams_a_json_answer_once_it_cannot_be_a_call():
    city = '{"name": "Paris", "population": 2}'
    reader, pieces, content, chunks = read_in_pieces(city, 1, tools=("Paris_lookup",), json_answer=True)
    assert content == city and not chunks and not reader.called
    first = next(i for i, p in enumerate(pieces) if p.content)
    assert city[:first + 1] == '{"name": "Paris"'  # held back only while it could still be a call
    with pytest.raises(ValueError, match="no branch"):
        ReplyReader(["add"], json_answer=False).feed('["not', )


class StreamingFakeClient(FakeClient):
    """Streams its canned reply a few characters at a time, then the result."""

    def stream(self, prompt, include_result=False, **opts):
        self.sent.append((prompt, opts))
        for i in range(0, len(self.reply), 4):
            yield StreamChunk(self.reply[i:i + 4], [])
        yield self.generate(prompt, **opts)


def test_streamed_tool_call_aggregates_to_the_invoked_message(monkeypatch):
    client = StreamingFakeClient(CALL)
    monkeypatch.setattr(ChatRadixLM, "_client", lambda self: client)
    llm = ChatRadixLM(endpoint=UNUSED).bind_tools([add, search_tool])
    chunks = list(llm.stream("find a"))
    assert sum(bool(c.tool_call_chunks) for c in chunks) > 3 and chunks[-1].chunk_position == "last"
    full = sum(chunks[1:], chunks[0])
    invoked = llm.invoke("find a")
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [(c["name"], c["args"]) for c in invoked.tool_calls]
    assert full.response_metadata["finish_reason"] == invoked.response_metadata["finish_reason"] == "tool_calls"
    assert full.usage_metadata == invoked.usage_metadata == {
        "input_tokens": 10, "output_tokens": 3, "total_tokens": 13, "input_token_details": {"cache_read": 8}}


def test_structured_output_streams_partial_objects(monkeypatch):
    client = StreamingFakeClient('{"x": "a longer text value"}')
    monkeypatch.setattr(ChatRadixLM, "_client", lambda self: client)
    partial = list(ChatRadixLM(endpoint=UNUSED).with_structured_output(Inner).stream("x?"))
    assert len(partial) > 1 and partial[-1] == Inner(x="a longer text value")


def test_profile_tells_capabilities_and_the_engine_context(monkeypatch):
    llm = ChatRadixLM(endpoint=UNUSED)
    assert llm.profile["tool_calling"] and llm.profile["structured_output"] and llm.profile["tool_call_streaming"]
    assert not llm.profile["image_inputs"] and "max_input_tokens" not in llm.profile  # not attached yet
    monkeypatch.setitem(langchain_common._clients, (UNUSED, "smollm2"), FakeClient(""))
    monkeypatch.setitem(langchain_common._engine_infos, (UNUSED, "smollm2"), {"max_context": 2048})
    assert ChatRadixLM(endpoint=UNUSED).profile["max_input_tokens"] == 2047
    llm._client()
    assert llm.profile["max_input_tokens"] == llm.profile["max_output_tokens"] == 2047
    mine = ChatRadixLM(endpoint=UNUSED, profile={"max_input_tokens": 100})
    mine._client()
    assert mine.profile == {"max_input_tokens": 100}  # a profile the caller gives is taken as it is


async def test_streamed_calls_carry_the_root_run_as_trace(monkeypatch):
    """langchain-core calls `_stream` without a run manager; the trace is still the root run's id."""
    import uuid

    from langchain_core.runnables import RunnableLambda

    client = StreamingFakeClient('{"answer": "hi"}')
    monkeypatch.setattr(ChatRadixLM, "_client", lambda self: client)
    llm = ChatRadixLM(endpoint=UNUSED).bind_tools([add])
    RunnableLambda(lambda x: list(llm.stream(x))).invoke("x", config={"run_id": uuid.UUID(int=9)})
    assert client.sent[-1][1]["trace_id"] == str(uuid.UUID(int=9))
