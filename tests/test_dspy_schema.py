"""The reply grammars the DSPy engine derives from a request (pure: no engine)."""

from __future__ import annotations

from typing import Literal

import dspy
import llguidance
import pydantic
import pytest
from dspy.lm15 import Config, FunctionTool, Message, Request, ToolCallPart, ToolChoice, ToolResultPart, TextPart

from radixlm.adapters.dspy_grammar import (MAX_ITEMS, cap_strings, chat_grammar, json_reply_schema, output_schema,
                                           string_budget, text_slots)
from radixlm.adapters.dspy_mapping import reply_constraint, request_messages, request_options, to_response
from radixlm.adapters.dspy_plan import PlanCallback
from radixlm.client import Result
from radixlm.protocol import DEFAULT_MAX_NEW_TOKENS


class Place(pydantic.BaseModel):
    city: str
    country: str


class Typed(dspy.Signature):
    """Describe the text."""

    text: str = dspy.InputField()
    sentiment: Literal["positive", "negative"] = dspy.OutputField()
    words: int = dspy.OutputField()
    is_question: bool = dspy.OutputField()
    keywords: list[str] = dspy.OutputField()
    place: Place = dspy.OutputField()


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return expression


def search(query: str) -> str:
    """Search the knowledge base."""
    return query


def test_chat_grammar_spells_each_type_the_way_chat_adapter_parses_it():
    grammar = chat_grammar(Typed, None, 128)
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(grammar)) == ""
    assert grammar.startswith('start: "[[ ## sentiment ## ]]\\n" ("positive" | "negative") "\\n\\n"')
    assert '"[[ ## is_question ## ]]\\n" ("True" | "False")' in grammar
    assert '"additionalProperties": false' in grammar and '"maxItems": 4' in grammar
    assert grammar.rstrip().endswith('"\\n\\n" "[[ ## completed ## ]]"')
    # a reply in that form parses with DSPy's own ChatAdapter
    reply = ('[[ ## sentiment ## ]]\npositive\n\n[[ ## words ## ]]\n7\n\n[[ ## is_question ## ]]\nFalse\n\n'
             '[[ ## keywords ## ]]\n["Paris", "France"]\n\n[[ ## place ## ]]\n{"city": "Paris", "country": "France"}'
             '\n\n[[ ## completed ## ]]')
    out = dspy.ChatAdapter().parse(Typed, reply)
    assert out == {"sentiment": "positive", "words": 7, "is_question": False, "keywords": ["Paris", "France"],
                   "place": Place(city="Paris", country="France")}


def test_free_text_is_one_capped_line_that_is_no_header_and_no_placeholder():
    grammar = chat_grammar(dspy.Signature("question -> answer"), None, 96)
    assert f"/[^\\s\\[{{][^\\n]{{0,{string_budget(96, 1) - 1}}}/" in grammar


def test_react_step_holds_each_tool_to_its_parameters_in_both_adapters():
    react = dspy.ReAct("question -> answer", tools=[calculator, search], max_iters=1)
    step = react.react.signature
    grammar = chat_grammar(step, react.tools, 96)
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(grammar)) == ""
    assert '"[[ ## next_tool_name ## ]]\\nsearch\\n\\n[[ ## next_tool_args ## ]]\\n" %json {"type": "object", ' \
           '"properties": {"query": {"type": "string", "maxLength": 64}}, "required": ["query"]' in grammar
    schema = json_reply_schema(step, react.tools, 96)
    by_tool = {b["properties"]["next_tool_name"]["const"]: b["properties"]["next_tool_args"] for b in schema["anyOf"]}
    assert by_tool["calculator"]["properties"] == {"expression": {"type": "string", "maxLength": 64}}
    assert by_tool["finish"] == {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
    # outside a ReAct (no tools, or other tools) the open dict holds scalar values
    plain = json_reply_schema(step, None, 96)
    assert plain["properties"]["next_tool_args"]["additionalProperties"] == {
        "type": ["string", "number", "boolean", "null"], "maxLength": 32}
    assert json_reply_schema(step, {"other": react.tools["search"]}, 96) == plain


def test_output_schema_closes_nested_models_and_caps_strings():
    schema = output_schema(Typed)
    assert schema["additionalProperties"] is False and schema["$defs"]["Place"]["additionalProperties"] is False
    assert set(schema["required"]) == set(Typed.output_fields)
    props = cap_strings({"type": "object", "properties": {"a": {"type": "string", "maxLength": 5},
                                                          "b": {"type": "string", "enum": ["x"]},
                                                          "c": {"type": ["string", "null"]}}}, 50)["properties"]
    assert props == {"a": {"type": "string", "maxLength": 5}, "b": {"type": "string", "enum": ["x"]},
                     "c": {"type": ["string", "null"], "maxLength": 50}}
    # the budget: 2 characters a token shared by the free strings and the markup; 512 tokens by default
    assert string_budget(None, 1) == DEFAULT_MAX_NEW_TOKENS and string_budget(96, 2) == 64 and string_budget(4, 1) == 16
    assert text_slots(schema) == MAX_ITEMS + 2  # each keyword, city and country (numbers, bools, enums hold none)


def _formatted(adapter: dspy.Adapter, signature) -> list[dict]:
    """Format a request through `adapter` with a PlanCallback active, as dspy.LM's caller would."""
    with dspy.context(callbacks=[PlanCallback()]):
        return adapter.format(signature, demos=[], inputs={"text": "I like Paris."})


def _request(messages: list[dict], **config) -> Request:
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = tuple(Message.user(m["content"]) for m in messages if m["role"] == "user")
    return Request(model="radixlm/smollm2", system=system, messages=turns, config=Config(**config))


def test_the_constraint_follows_the_adapter_that_formatted_the_request():
    chat = _request(_formatted(dspy.ChatAdapter(), Typed), max_tokens=128)
    assert reply_constraint(chat, 128) == {"lark": chat_grammar(Typed, None, 128)}
    # JSONAdapter: the full schema, even where DSPy asked for schema-less JSON mode
    as_json = _request(_formatted(dspy.JSONAdapter(), Typed), max_tokens=128, response_format={"type": "json_object"})
    assert reply_constraint(as_json, 128) == {"json_schema": json_reply_schema(Typed, None, 128)}
    # XMLAdapter parses its own way: only the request's own response_format counts
    assert reply_constraint(_request(_formatted(dspy.XMLAdapter(), Typed)), 128) == {}
    # a request the adapter did not format (other last message) gets no adapter grammar
    other = _request([{"role": "user", "content": "hello"}])
    assert reply_constraint(other, 128) == {}
    # an explicit constraint wins
    explicit = _request(_formatted(dspy.ChatAdapter(), Typed), extensions={"regex": "a+"})
    assert request_options(explicit, None)["regex"] == "a+" and "lark" not in request_options(explicit, None)


def _tool(fn) -> FunctionTool:
    spec = dspy.Tool(fn).format_as_litellm_function_call()["function"]
    return FunctionTool(name=spec["name"], description=spec["description"], parameters=spec["parameters"])


def test_native_tool_calls_are_decoded_under_the_tools_schemas_and_rendered_back():
    tools = (_tool(search), _tool(calculator))
    call = ToolCallPart(id="call_1", name="search", input={"query": "eiffel"})
    request = Request(model="radixlm/smollm2", system="Be brief.", tools=tools, config=Config(max_tokens=64),
                      messages=(Message.user("How tall?"), Message.assistant([call]),
                                Message(role="tool", parts=(ToolResultPart(id="call_1", content=(TextPart("330 m"),)),)),
                                Message.user("Answer now.")))
    messages = request_messages(request)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert "search: Search the knowledge base." in messages[0]["content"]
    assert messages[2]["content"] == '{"tool_calls": [{"name": "search", "arguments": {"query": "eiffel"}}]}'
    assert messages[3]["content"] == "330 m"
    auto = reply_constraint(request, 64)["lark"]
    assert auto.startswith("start: calls | reply\n")
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(auto)) == ""
    required = Request(model="m", messages=(Message.user("x"),), tools=tools,
                       config=Config(tool_choice=ToolChoice(mode="required", allowed=("calculator",))))
    schema = reply_constraint(required, 64)["json_schema"]
    (branch,) = schema["properties"]["tool_calls"]["items"]["anyOf"]
    assert branch["properties"]["name"] == {"const": "calculator"} and schema["properties"]["tool_calls"]["maxItems"] == 1
    # the generated JSON comes back as lm15 tool calls
    text = '{"tool_calls": [{"name": "calculator", "arguments": {"expression": "2 * 3"}}]}'
    response = to_response(required, Result(text, [], "stop", 10, 0, 5, None, None, None, None, None), None)
    assert response.finish_reason == "tool_call"
    (part,) = response.tool_calls
    assert (part.name, part.input) == ("calculator", {"expression": "2 * 3"})


def test_unsupported_requests_raise_lm15_errors():
    from dspy.lm15 import BuiltinTool, UnsupportedFeatureError

    with pytest.raises(UnsupportedFeatureError, match="built-in"):
        request_options(Request(model="m", messages=(Message.user("x"),), tools=(BuiltinTool(name="web"),)), None)
