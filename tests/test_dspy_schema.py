"""The output grammars the DSPy adapters send (pure: no engine)."""

from __future__ import annotations

import dspy

from radixlm.adapters.dspy_adapters import cap_strings, output_schema, react_step_schema, string_budget
from test_dspy import AgentTask, Facts, calculator, search


def test_radix_json_adapter_constrains_open_mappings():
    react = dspy.ReAct("question -> answer", tools=[lambda x: x], max_iters=1)
    schema = output_schema(react.react.signature, True)
    assert schema["properties"]["next_tool_name"]["enum"] == ["<lambda>", "finish"]
    assert schema["properties"]["next_tool_args"]["type"] == "object"
    assert set(schema["required"]) == {"next_thought", "next_tool_name", "next_tool_args"}


def test_react_step_grammar_holds_each_tool_to_its_parameters():
    react = dspy.ReAct(AgentTask, tools=[calculator, search], max_iters=1)
    schema = react_step_schema(output_schema(react.react.signature, False), react.tools)
    by_tool = {b["properties"]["next_tool_name"]["const"]: b["properties"]["next_tool_args"] for b in schema["anyOf"]}
    assert by_tool["calculator"]["properties"] == {"expression": {"type": "string"}}
    assert by_tool["search"]["required"] == ["query"] and by_tool["finish"]["properties"] == {}
    assert all(args["additionalProperties"] is False for args in by_tool.values())
    # a signature that is not a ReAct step, or tools that do not match its names, pass unchanged
    plain = output_schema(dspy.Predict(Facts).signature, False)
    assert react_step_schema(plain, react.tools) is plain


def test_free_strings_are_capped_to_a_share_of_the_token_budget():
    react = dspy.ReAct(AgentTask, tools=[calculator, search], max_iters=1)
    schema = react_step_schema(output_schema(react.react.signature, False), react.tools)
    assert string_budget(96, schema) == 144  # next_thought is each branch's one top-level string
    capped = cap_strings(schema, 144)
    for branch in capped["anyOf"]:
        assert branch["properties"]["next_thought"]["maxLength"] == 144
        assert "maxLength" not in branch["properties"]["next_tool_name"]  # a const is not a free string
    search_args = next(b for b in capped["anyOf"] if b["properties"]["next_tool_name"]["const"] == "search")
    assert search_args["properties"]["next_tool_args"]["properties"]["query"]["maxLength"] == 144
    facts = output_schema(dspy.Predict(Facts).signature, False)
    assert string_budget(None, facts) == 768 and string_budget(4, facts) == 32
    own = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}, "b": {"type": ["string", "null"]},
                                            "c": {"type": "string", "enum": ["x"]}}}
    props = cap_strings(own, 50)["properties"]
    assert props == {"a": {"type": "string", "maxLength": 5}, "b": {"type": ["string", "null"], "maxLength": 50},
                     "c": {"type": "string", "enum": ["x"]}}
