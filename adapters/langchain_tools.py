"""LangChain messages -> the engine's chat messages, and tool calling under a grammar: the tools'
argument schemas become one JSON schema (an anyOf over {"name": <tool>, "arguments": <its schema>},
plus the final answer when the model may also answer), so every tool call the engine produces
parses into valid arguments. The final answer is {"answer": <text>} or, with a `response_format`,
an object of its schema."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any, Sequence

from langchain_core.messages import (AIMessage, BaseMessage, ChatMessage, FunctionMessage, HumanMessage,
                                     SystemMessage, ToolMessage)

from .schema_bounds import bound_schema

# The grammar writes JSON the way json.dumps does with these separators; history is rendered the same
# way so a tool loop's earlier turns stay byte-identical (and so stay in the engine's prefix cache).
SEPARATORS = (", ", ": ")
# Longest string value a constrained reply may hold unless its schema says otherwise.
MAX_STRING = 100
# A reply under the tool grammar (a call, or a structured answer) gets at least this many tokens.
TOOL_MAX_TOKENS = 512


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=SEPARATORS)


def _text_of(content: Any) -> str:
    """Plain text of a message's content (a string or a list of content blocks); a text-only model
    cannot take images, audio or files."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") in ("text", "text-plain") and "text" in block:
            parts.append(block["text"])
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call", "reasoning", "thinking"):
            continue  # rendered from message.tool_calls instead / not shown to the model
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"content block of type {kind!r} is not supported: this engine serves text-only models")
    return "".join(parts)


def render_tool_call(name: str, args: dict) -> str:
    return dumps({"name": name, "arguments": args})


def to_engine_messages(messages: Sequence[BaseMessage], tools_prompt: str | None = None) -> list[dict[str, str]]:
    """LangChain messages as the engine's {"role", "content"} chat messages. Tool calls of an
    AIMessage are rendered as the JSON the tool grammar produces; a ToolMessage becomes a "tool" turn.
    `tools_prompt` is appended to the (first) system message, or becomes one."""
    out: list[dict[str, str]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text_of(m.content)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text_of(m.content)})
        elif isinstance(m, AIMessage):
            text = _text_of(m.content)
            calls = [render_tool_call(tc["name"], tc["args"]) for tc in m.tool_calls]
            out.append({"role": "assistant", "content": "\n".join(([text] if text else []) + calls)})
        elif isinstance(m, ToolMessage):
            text = _text_of(m.content) if not isinstance(m.content, str) else m.content
            if getattr(m, "status", "success") == "error":
                text = f"Error: {text}"
            out.append({"role": "tool", "content": text})
        elif isinstance(m, FunctionMessage):
            out.append({"role": "tool", "content": _text_of(m.content)})
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _text_of(m.content)})
        else:
            raise ValueError(f"unsupported message type {type(m).__name__}")
    return with_system_text(out, tools_prompt) if tools_prompt else out


def with_system_text(messages: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    """`messages` with `text` appended to the leading system message, or as a new one before them."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def normalize_tool_choice(choice: str | dict | bool | None, names: Sequence[str]) -> str | None:
    """None (the caller's default), "auto", "any" (True, "any", "required"), "none" (False), or one of
    `names` (a bare name, {"type": "function", "function": {"name": ...}} or {"name": ...});
    ValueError for a name that is not among the tools."""
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    if choice is True or choice == "required":
        return "any"
    if choice is False:
        return "none"
    if choice not in (None, "auto", "any", "none") and choice not in names:
        raise ValueError(f"tool_choice {choice!r} is not one of the tools {list(names)}")
    return choice


def tool_reply_options(options: dict[str, Any], tools: Sequence[dict], choice: str, answer: dict | None,
                       max_string: int | None = MAX_STRING, tool_max_tokens: int = TOOL_MAX_TOKENS) -> dict[str, Any]:
    """`options` for a reply under the tool grammar: a call of one of `tools` (as `choice` allows) or an
    answer (`answer`'s schema, else text capped at ~4 characters per token of max_new_tokens, so a small
    model that loops inside it stops near the budget asked for); at least `tool_max_tokens` tokens when a
    call may come; no stop strings (one inside the JSON would cut the reply short)."""
    budget = options["max_new_tokens"]
    out = {k: v for k, v in options.items() if k != "stop"}
    out["json_schema"] = tool_call_grammar(tools, choice, max_string, answer or text_answer_schema(4 * budget))
    if choice != "none":
        out["max_new_tokens"] = max(budget, tool_max_tokens)
    return out


def _rewrite_refs(node: Any, rename: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                for old, new in rename.items():
                    if v == old:
                        v = new
                        break
                out[k] = v
            else:
                out[k] = _rewrite_refs(v, rename)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, rename) for v in node]
    return node


def tighten(node: Any, max_string: int | None = MAX_STRING) -> Any:
    """Objects without an explicit `additionalProperties` get `false` (the model cannot invent keys),
    strings without a `maxLength` get `max_string` and integers without bounds JSON's safe-integer
    range (a small greedy model cannot loop inside a string or a number until its token budget ends).
    Every output still satisfies the original schema."""
    return bound_schema(node, max_string, close_objects=True, bound_integers=True)


def arguments_schema(parameters: dict | None, prefix: str, defs: dict[str, Any]) -> dict:
    """A tool's argument schema with its local definitions moved into `defs` under unique names."""
    schema = copy.deepcopy(parameters or {"type": "object", "properties": {}})
    schema.pop("title", None)
    schema.pop("description", None)
    rename: dict[str, str] = {}
    for key in ("$defs", "definitions"):
        for name, sub in (schema.pop(key, None) or {}).items():
            new = f"{prefix}{name}"
            rename[f"#/{key}/{name}"] = f"#/$defs/{new}"
            defs[new] = sub
    if rename:
        schema = _rewrite_refs(schema, rename)
        for name in [n for n in defs if n.startswith(prefix)]:
            defs[name] = _rewrite_refs(defs[name], rename)
    if schema.get("type") is None and "properties" in schema:
        schema["type"] = "object"
    if schema.get("type") == "object" and "properties" not in schema:
        schema["properties"] = {}
    return schema


def text_answer_schema(max_chars: int | None = None) -> dict:
    """Schema of a plain final answer {"answer": <non-empty text of at most `max_chars` characters>}."""
    text: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_chars:
        text["maxLength"] = max_chars
    return {"type": "object", "properties": {"answer": text}, "required": ["answer"], "additionalProperties": False}


def response_format_schema(response_format: dict, max_string: int | None = MAX_STRING) -> dict:
    """The JSON schema of an OpenAI-style `response_format`: {"type": "json_schema", "json_schema":
    {"schema": ...}} (what `langchain.agents` binds for its ProviderStrategy) or {"type": "json_object"}."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        return tighten(response_format["json_schema"].get("schema") or {"type": "object"}, max_string)
    raise ValueError(f"unsupported response_format {response_format!r}: use type json_schema or json_object")


def tool_call_grammar(tools: Sequence[dict], choice: str | None, max_string: int | None = MAX_STRING,
                      answer: dict | None = None) -> dict:
    """JSON schema of one reply: a call of one of `tools` (OpenAI tool dicts), restricted to the tool
    named by `choice`; when `choice` is "auto" also a final answer, when "none" only that answer.
    `answer` is the final answer's schema (default: `text_answer_schema()`)."""
    defs: dict[str, Any] = {}
    branches = []
    for i, t in enumerate(tools if choice != "none" else []):
        fn = t["function"]
        if choice not in (None, "auto", "any") and fn["name"] != choice:
            continue
        args = arguments_schema(fn.get("parameters"), f"t{i}_", defs)
        branches.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": args},
                         "required": ["name", "arguments"], "additionalProperties": False})
    if not branches and choice != "none":
        raise ValueError(f"tool_choice {choice!r} names none of the bound tools")
    branches = tighten(branches, max_string)
    if choice in ("auto", "none"):
        branches.append(answer or text_answer_schema())
    schema: dict[str, Any] = branches[0] if len(branches) == 1 else {"anyOf": branches}
    if defs:
        schema = {**schema, "$defs": tighten(defs, max_string)}
    return schema


def tools_prompt(tools: Sequence[dict], json_answer: bool = False) -> str:
    """The system-prompt text that describes `tools` and the reply format. It does not depend on
    `tool_choice` (the grammar enforces that), so an agent that changes it keeps its cached prefix."""
    lines = ["You can call these tools:"]
    for t in tools:
        fn = t["function"]
        params = fn.get("parameters") or {}
        lines.append(f"- {fn['name']}: {fn.get('description', '').strip()} "
                     f"Arguments: {dumps(params.get('properties', {}))}")
    lines.append('To call a tool, reply with JSON: {"name": <tool name>, "arguments": {<arguments>}}.')
    lines.append("When no tool is needed, reply with your answer as a JSON object." if json_answer
                 else 'When no tool is needed, reply with JSON: {"answer": <your answer>}.')
    return "\n".join(lines)


def _salvage_answer(text: str) -> str | None:
    """The answer text of a reply cut short inside {"answer": "..."}."""
    head = '{"answer": "'
    if not text.startswith(head):
        return None
    body = text[len(head):]
    for end in range(len(body), -1, -1):
        try:
            return json.loads('"' + body[:end] + '"')
        except json.JSONDecodeError:
            continue
    return ""


def parse_reply(text: str, json_answer: bool = False) -> tuple[str, list[dict], list[dict]]:
    """(content, tool_calls, invalid_tool_calls) of a grammar-constrained reply. With `json_answer`
    a final answer is a JSON object of its own (kept as the content text), else {"answer": text}."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        answer = None if json_answer else _salvage_answer(text)
        if answer is not None:
            return answer, [], []
        return "", [], [{"type": "invalid_tool_call", "name": None, "args": text, "id": new_call_id(),
                         "error": f"reply was cut off before it was complete ({err})"}]
    if isinstance(obj, dict) and set(obj) == {"name", "arguments"}:
        return "", [{"type": "tool_call", "name": obj["name"], "args": obj["arguments"], "id": new_call_id()}], []
    return (text if json_answer else obj["answer"]), [], []


def new_call_id() -> str:
    """A fresh tool call id in OpenAI's style."""
    return "call_" + uuid.uuid4().hex[:24]
