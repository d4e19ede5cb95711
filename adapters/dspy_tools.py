"""Native function calling for DSPy on the engine: the lm15 request's tools are described in the
system prompt, and a tool call is decoded under the grammar of the tools' parameter schemas as

    {"tool_calls": [{"name": "<tool>", "arguments": {<that tool's parameters>}}]}

which `tool_calls_of` turns into lm15 tool calls. Earlier tool calls in the conversation are rendered
as that same JSON and tool results as "tool" turns, so each step of a tool loop extends the previous
step's prompt (and the radix cache serves it)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from dspy.lm15 import FunctionTool, Request, ToolCallPart

from .dspy_grammar import cap_strings, string_budget, text_slots, tool_arguments

# json.dumps' default separators are the ones the engine's JSON grammar writes, so a rendered call is
# byte-identical to the generated one.
CALL_KEY = "tool_calls"


def tools_prompt(tools: tuple[FunctionTool, ...]) -> str:
    """The system-prompt section that describes the tools and the tool-call format."""
    lines = [f'To call tools, reply with only a JSON object {{"{CALL_KEY}": [{{"name": <tool name>, '
             '"arguments": {<its arguments>}}]}. The tools:']
    for tool in tools:
        params = json.dumps(tool.parameters.get("properties", {}), ensure_ascii=False)
        lines.append(f"- {tool.name}: {tool.description or ''} Arguments: {params}")
    return "\n".join(lines)


def _allowed(request: Request) -> tuple[FunctionTool, ...]:
    choice = request.config.tool_choice
    tools = tuple(t for t in request.tools if isinstance(t, FunctionTool))
    if choice is not None and choice.allowed:
        tools = tuple(t for t in tools if t.name in choice.allowed)
    return tools


def tool_calls_schema(request: Request, max_tokens: int | None) -> dict[str, Any]:
    """The JSON schema of a tool-call reply to `request`: one branch per allowed tool, its arguments
    held to that tool's parameters; one call unless tool_choice allows parallel calls."""
    calls = [{"type": "object", "properties": {"name": {"const": t.name},
                                               "arguments": tool_arguments(t.parameters.get("properties", {}))},
              "required": ["name", "arguments"], "additionalProperties": False} for t in _allowed(request)]
    choice = request.config.tool_choice
    array: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if choice is None or not choice.parallel:
        array["maxItems"] = 1
    schema = {"type": "object", "properties": {CALL_KEY: array}, "required": [CALL_KEY], "additionalProperties": False}
    return cap_strings(schema, string_budget(max_tokens, text_slots(schema)))


def tool_mode(request: Request) -> str:
    """"none" (answer in text: also when the request offers no tools), "required" (call a tool) or
    "auto" (either)."""
    if not request.tools:
        return "none"
    choice = request.config.tool_choice
    return "auto" if choice is None else choice.mode


def render_calls(parts: list[ToolCallPart]) -> str:
    """Earlier tool calls of an assistant turn, as the grammar writes them."""
    return json.dumps({CALL_KEY: [{"name": p.name, "arguments": p.input} for p in parts]}, ensure_ascii=False)


def tool_calls_of(text: str) -> list[ToolCallPart] | None:
    """The tool calls of a reply decoded under `tool_calls_schema` (None for a text reply)."""
    try:
        reply = json.loads(text)
    except ValueError:  # a text reply
        return None
    if not isinstance(reply, dict) or set(reply) != {CALL_KEY}:
        return None
    calls = reply[CALL_KEY]
    return [ToolCallPart(id=f"call_{uuid.uuid4().hex[:12]}", name=c["name"], input=c["arguments"]) for c in calls]
