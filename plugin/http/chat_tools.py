"""OpenAI chat requests as engine requests: messages (with earlier tool calls and tool results) as the
engine's chat messages, `tools` / `tool_choice` and `response_format` as one JSON-schema grammar, and a
grammar reply back as OpenAI's `content` / `tool_calls`. The grammar, the tools prompt and the reply
parsing are the LangChain adapter's (radixlm.adapters.langchain_tools), so a tool loop over HTTP renders
and constrains exactly as one through the adapter does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import HTTPError

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
         "function": "tool"}


def _grammar():
    """The LangChain adapter's tool grammar helpers (they need langchain-core, part of the `http` extra)."""
    from radixlm.adapters import langchain_tools

    return langchain_tools


@dataclass
class ChatRequest:
    """What the engine gets for one chat completion; `reply_format` as in the LangChain adapter: None
    (free text), "tools" (answer {"answer": text}) or "tools+json" (answer: the response_format object)."""

    messages: list[dict[str, str]]
    options: dict[str, Any]
    reply_format: str | None


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise HTTPError(400, f"{where}: content part of type {kind!r} is not supported: this engine "
                                "serves text-only models", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise HTTPError(400, f"{where}: content must be a string or a list of text parts", param="messages")


def _tool_call_text(call: Any, where: str) -> str:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise HTTPError(400, f"{where}: each tool call needs function.name", param="messages")
    raw = fn.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"{where}: tool call arguments are not JSON ({exc})", param="messages") from None
    return _grammar().render_tool_call(fn["name"], args)


def engine_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI chat messages as the engine's {"role", "content"} messages (assistant tool calls rendered as
    the JSON the tool grammar writes, tool results as "tool" turns)."""
    if not messages:
        raise HTTPError(400, "messages must not be empty", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = ROLES.get(m.get("role")) if isinstance(m.get("role"), str) else None
        if role is None:
            raise HTTPError(400, f"{where}: unknown role {m.get('role')!r}; use one of {', '.join(ROLES)}",
                            param="messages")
        text = _text(m.get("content"), where)
        if role == "assistant" and m.get("tool_calls"):
            calls = [_tool_call_text(c, where) for c in m["tool_calls"]]
            text = "\n".join(([text] if text else []) + calls)
        out.append({"role": role, "content": text})
    return out


def _tool_choice(choice: Any, tools: list[dict]) -> str:
    """OpenAI's tool_choice forms only (None, "auto", "none", "required", {"function": {"name"}}), named
    in the adapter's vocabulary."""
    named = isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name")
    if not (choice in (None, "auto", "none", "required") or named):
        raise HTTPError(400, "tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", "
                        "\"function\": {\"name\": ...}}", param="tool_choice")
    try:
        return _grammar().normalize_tool_choice(choice, [t["function"]["name"] for t in tools]) or "auto"
    except ValueError as exc:
        raise HTTPError(400, str(exc), param="tool_choice") from None


def _check_tools(tools: list[dict]) -> None:
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if t.get("type", "function") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise HTTPError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                            param="tools")


def _answer_schema(response_format: dict | None) -> dict | None:
    if response_format is None or response_format.get("type") == "text":
        return None
    try:
        return _grammar().response_format_schema(response_format)
    except ValueError as exc:
        raise HTTPError(400, str(exc), param="response_format") from None


def chat_request(messages: list[dict[str, Any]], tools: list[dict] | None, tool_choice: Any,
                 response_format: dict | None, options: dict[str, Any]) -> ChatRequest:
    """The engine request of a chat completion whose sampling `options` are already mapped."""
    g = _grammar()
    prompt = engine_messages(messages)
    answer = _answer_schema(response_format)
    options = dict(options)
    if tools:
        _check_tools(tools)
        choice = _tool_choice(tool_choice, tools)
        options = g.tool_reply_options(options, tools, choice, answer)
        prompt = g.with_system_text(prompt, g.tools_prompt(tools, json_answer=answer is not None))
        return ChatRequest(prompt, options, "tools+json" if answer is not None else "tools")
    if tool_choice not in (None, "none", "auto"):
        raise HTTPError(400, "tool_choice needs tools", param="tool_choice")
    if answer is not None:
        options["json_schema"] = answer
    return ChatRequest(prompt, options, None)


def reply_message(text: str, finish_reason: str, reply_format: str | None) -> tuple[dict[str, Any], str]:
    """(OpenAI assistant message, finish reason) of the engine's reply text."""
    if reply_format is None:
        return {"role": "assistant", "content": text}, finish_reason
    content, calls, invalid = _grammar().parse_reply(text, json_answer=reply_format == "tools+json")
    if invalid:  # the reply was cut off (finish_reason "length"): hand back what was written
        return {"role": "assistant", "content": text}, finish_reason
    if calls:
        tool_calls = [{"id": c["id"], "type": "function",
                       "function": {"name": c["name"], "arguments": _grammar().dumps(c["args"])}} for c in calls]
        return {"role": "assistant", "content": None, "tool_calls": tool_calls}, \
            "tool_calls" if finish_reason == "stop" else finish_reason
    return {"role": "assistant", "content": content}, finish_reason
