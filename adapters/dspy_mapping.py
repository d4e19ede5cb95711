"""Mapping between DSPy's canonical lm15 requests/responses and radixlm generation options/results.

  * `system` + `messages` (text parts only) -> chat messages; the engine renders them with the
    model's own chat template, so the radix cache sees identical prefixes across calls.
  * Config: max_tokens -> max_new_tokens, temperature, top_p, top_k, stop, seed,
    frequency_penalty, presence_penalty; logprobs (0: chosen tokens, k > 0: plus top-k);
    response_format json_schema -> the engine's json_schema constraint, json_object -> a
    constraint to any JSON object; Config.cache (provider prompt caching) needs nothing.
  * Config.extensions pass through as engine generation options (see EXTENSION_OPTIONS).
  * The reply is decoded under the grammar of what the DSPy adapter that formatted the request
    will parse (dspy_plan.py, dspy_grammar.py); a constraint passed through extensions wins.
  * tools / tool_choice: native function calling (dspy_tools.py): tool calls come back as
    ToolCallParts (finish_reason "tool_call"), tool results go in as "tool" turns.
  * Refused with `UnsupportedFeatureError`: built-in (provider) tools, reasoning, images or other
    non-text parts, service_tier / user_id / store, probabilities="required".
Usage: input_tokens = prompt tokens, output_tokens = generated tokens, cache_read_tokens = prompt
tokens served from the radix cache."""

from __future__ import annotations

import inspect
from typing import Any

import dspy
from dspy.lm15 import (
    FunctionTool,
    InvalidRequestError,
    Message,
    ProviderError,
    Request,
    Response,
    ServerError,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    TextPart,
    TokenLogprob,
    ToolCallPart,
    ToolResultPart,
    TopLogprob,
    UnsupportedFeatureError,
    Usage,
)
from dspy.lm15 import TimeoutError as LM15TimeoutError

from radixlm.client import CONSTRAINT_FIELDS, Result, StreamChunk
from radixlm.protocol import max_new_tokens_of
from radixlm.connection import EngineDiedError, EngineError

from .dspy_grammar import chat_grammar, json_reply_schema, lark_json
from .dspy_plan import plan_for
from .dspy_tools import render_calls, tool_calls_of, tool_calls_schema, tool_mode, tools_prompt
from .dspy_trace import current_tools, current_trace_id

PROVIDER = "radixlm"
# Engine generation options a caller may pass through Config.extensions.
EXTENSION_OPTIONS = frozenset({
    "min_p", "repetition_penalty", "min_new_tokens", "stop_token_ids", "ignore_eos",
    "regex", "choices", "lark", "json_schema", "trace_id",
})
_FINISH = {"stop": "stop", "length": "length"}
# How DSPy's own adapters parse a reply: an adapter whose parse is one of these gets its grammar.
_CHAT_PARSE = inspect.unwrap(dspy.ChatAdapter.parse)
_JSON_PARSE = inspect.unwrap(dspy.JSONAdapter.parse)


def _unsupported(feature: str, detail: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(f"radixlm: {detail}", provider=PROVIDER, feature=feature)


def _text_of(parts, where: str) -> str:
    texts = []
    for part in parts:
        if isinstance(part, TextPart):
            texts.append(part.text)
        else:
            raise _unsupported(getattr(part, "type", "part"), f"{where} carries a {type(part).__name__}; "
                               "the radixlm engine takes text only")
    return "".join(texts)


def _message(i: int, message: Message) -> dict[str, str]:
    where = f"message {i}"
    if message.role == "user":
        return {"role": "user", "content": _text_of(message.parts, where)}
    if message.role == "assistant":
        calls = message.parts_of(ToolCallPart)
        text = _text_of([p for p in message.parts if not isinstance(p, ToolCallPart)], where)
        return {"role": "assistant", "content": "\n".join(([text] if text else []) + ([render_calls(calls)] if calls else []))}
    if message.role == "tool":
        results = message.parts_of(ToolResultPart)
        if len(results) != len(message.parts):
            raise _unsupported("tools", f"{where}: a tool message carries tool results only")
        texts = [("Error: " if r.is_error else "") + _text_of(r.content, f"{where}'s tool result") for r in results]
        return {"role": "tool", "content": "\n".join(texts)}
    raise _unsupported(message.role, f"{where} has role {message.role!r}, which the radixlm engine does not take")


def request_messages(request: Request) -> list[dict[str, str]]:
    """The request's system prompt (plus the tools' description when it offers tools) and messages as
    chat messages."""
    out = []
    system = request.system if isinstance(request.system, str) or request.system is None \
        else _text_of(request.system, "system")
    if tool_mode(request) != "none":
        system = tools_prompt(request.tools) if system is None else f"{system}\n\n{tools_prompt(request.tools)}"
    if system is not None:
        out.append({"role": "system", "content": system})
    out.extend(_message(i, m) for i, m in enumerate(request.messages))
    return out


def _check_tools(request: Request) -> None:
    for tool in request.tools:
        if not isinstance(tool, FunctionTool):
            raise _unsupported("builtin_tools", f"tool {tool.name!r} is a provider built-in tool; the radixlm "
                               "engine calls function tools only")


def _last_user_text(request: Request) -> str | None:
    last = request.messages[-1]
    if last.role != "user" or not all(isinstance(p, TextPart) for p in last.parts):
        return None
    return "".join(p.text for p in last.parts)


def _reply_grammar(request: Request, max_tokens: int | None, rule: str) -> tuple[str, str | dict] | None:
    """The constraint of a text reply: the grammar of what the DSPy adapter that formatted the
    request will parse, else the request's response_format, else None. A Lark grammar names its
    reply `rule`."""
    last = _last_user_text(request)
    plan = plan_for(last) if last is not None else None
    rf = request.config.response_format
    if plan is not None:
        parser = inspect.unwrap(type(plan.adapter).parse)
        if parser is _JSON_PARSE:
            return "json_schema", json_reply_schema(plan.signature, current_tools(), max_tokens)
        if parser is _CHAT_PARSE and rf is None and plan.signature.output_fields:
            return "lark", chat_grammar(plan.signature, current_tools(), max_tokens, start=rule)
    if rf is None:
        return None
    return "json_schema", rf["schema"] if rf["type"] == "json_schema" else {"type": "object"}


def _lark_rule(name: str, constraint: tuple[str, str | dict] | None) -> str:
    """Lark rules whose rule `name` is the reply `constraint` describes (free text when None)."""
    if constraint is None:
        return f"{name}: /[^{{\\s](?s:.)*/\n"
    kind, value = constraint
    return value if kind == "lark" else f"{name}: {lark_json(value)}\n"


def reply_constraint(request: Request, max_tokens: int | None) -> dict[str, Any]:
    """The engine constraint (one of json_schema / lark) for the reply to `request`: the adapter's
    reply grammar, or, when the request offers tools, a tool call under the tools' parameter
    schemas (tool_choice "required") or either of the two ("auto")."""
    mode = tool_mode(request)
    reply = _reply_grammar(request, max_tokens, "start" if mode == "none" else "reply")
    if mode == "none":
        return {} if reply is None else {reply[0]: reply[1]}
    calls = tool_calls_schema(request, max_tokens)
    if mode == "required":
        return {"json_schema": calls}
    return {"lark": "start: calls | reply\n" + _lark_rule("calls", ("json_schema", calls)) + _lark_rule("reply", reply)}


def check_streamable(request: Request) -> None:
    """Streams carry text only: a request that may answer with a tool call is refused."""
    if tool_mode(request) != "none":
        raise _unsupported("tools", "streaming a reply that may be a tool call is not supported; call "
                           "complete() (DSPy does when the program is not streamed)")


def request_options(request: Request, default_trace: str | None) -> dict[str, Any]:
    """The engine generation options of a request; raises lm15 errors for what is not supported."""
    if not isinstance(request, Request):
        raise TypeError("An engine requires a dspy.lm15.Request")
    _check_tools(request)
    c = request.config
    if c.tool_choice is not None and not request.tools and c.tool_choice.mode != "none":
        raise InvalidRequestError("radixlm: tool_choice without tools", provider=PROVIDER)
    if c.reasoning is not None:
        raise _unsupported("reasoning", "reasoning controls are not supported")
    for name in ("service_tier", "user_id", "store"):
        if getattr(c, name) is not None:
            raise _unsupported(name, f"{name} has no meaning for a local engine")
    if c.probabilities == "required":
        raise _unsupported("probabilities", "probabilities are not supported")
    opts: dict[str, Any] = {"max_new_tokens": max_new_tokens_of(c.max_tokens)}
    for name in ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty"):
        value = getattr(c, name)
        if value is not None:
            opts[name] = value
    if c.stop:
        opts["stop"] = list(c.stop)
    if c.logprobs is not None:
        opts["logprobs"] = True
        if c.logprobs > 0:
            opts["top_logprobs"] = c.logprobs
    for key, value in (c.extensions or {}).items():
        if key not in EXTENSION_OPTIONS:
            raise InvalidRequestError(f"radixlm: unknown generation option {key!r} (known: "
                                      f"{', '.join(sorted(EXTENSION_OPTIONS))})", provider=PROVIDER)
        opts[key] = value
    constraints = sorted(k for k in CONSTRAINT_FIELDS if opts.get(k) is not None)
    if len(constraints) > 1:
        raise InvalidRequestError(f"radixlm: one constraint per request, got {constraints}", provider=PROVIDER)
    if not constraints:  # a constraint passed explicitly wins over the derived one
        opts.update(reply_constraint(request, opts["max_new_tokens"]))
    trace_id = opts.get("trace_id") or current_trace_id() or default_trace
    if trace_id is not None:
        opts["trace_id"] = trace_id
    return opts


def _usage(result: Result) -> Usage:
    return Usage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens,
                 cache_read_tokens=result.cached_tokens)


def _logprobs(result: Result) -> tuple[TokenLogprob, ...] | None:
    if result.output_logprobs is None:
        return None
    tops = result.output_top_logprobs or [[] for _ in result.output_logprobs]
    return tuple(
        TokenLogprob(token=text, logprob=float(lp), token_id=tid,
                     top=tuple(TopLogprob(token=t, logprob=float(l), token_id=i) for l, i, t in top))
        for (lp, tid, text), top in zip(result.output_logprobs, tops)
    )


def _finish(result: Result) -> str:
    reason = _FINISH.get(result.finish_reason)
    if reason is None:
        raise ServerError(f"radixlm: generation ended with {result.finish_reason!r}", provider=PROVIDER)
    return reason


def _provider_data(result: Result, trace_id: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"cached_tokens": result.cached_tokens}
    if result.matched_stop is not None:
        data["matched_stop"] = result.matched_stop
    if trace_id is not None:
        data["trace_id"] = trace_id
    return data


def to_response(request: Request, result: Result, trace_id: str | None) -> Response:
    """A finished engine generation as an lm15 Response (tool calls when the request offered tools
    and the reply is one)."""
    calls = tool_calls_of(result.text) if request.tools and result.finish_reason == "stop" else None
    message = Message.assistant(calls if calls else [TextPart(result.text)])
    return Response(id=None, model=request.model, message=message,
                    finish_reason="tool_call" if calls else _finish(result), usage=_usage(result),
                    logprobs=_logprobs(result), provider_data=_provider_data(result, trace_id))


def translate_error(exc: BaseException) -> BaseException:
    """Engine and client failures as lm15 errors, so DSPy's retry policy classifies them."""
    if isinstance(exc, EngineError):
        if exc.code in ("invalid_request", "too_large", "bad_message"):
            return InvalidRequestError(f"radixlm: {exc}", provider=PROVIDER, provider_code=exc.code)
        return ServerError(f"radixlm: {exc}", provider=PROVIDER, provider_code=exc.code)
    if isinstance(exc, EngineDiedError):
        # Not retryable: a dead engine does not come back by itself.
        return ProviderError(f"radixlm: {exc}", provider=PROVIDER, provider_code="engine_died")
    if isinstance(exc, TimeoutError):
        return LM15TimeoutError(f"radixlm: {exc}", provider=PROVIDER)
    if isinstance(exc, (TypeError, ValueError)):
        return InvalidRequestError(f"radixlm: {exc}", provider=PROVIDER)
    return exc


class StreamAssembler:
    """Turns the client's stream items (chunks, then the final Result) into lm15 stream events."""

    def __init__(self, model: str, trace_id: str | None) -> None:
        self.model, self.trace_id = model, trace_id

    def start(self) -> StreamStartEvent:
        return StreamStartEvent(model=self.model)

    def events(self, item: StreamChunk | Result) -> list:
        if isinstance(item, StreamChunk):
            return [StreamDeltaEvent(TextDelta(item.text))] if item.text else []
        return [StreamEndEvent(finish_reason=_finish(item), usage=_usage(item),
                               provider_data=_provider_data(item, self.trace_id))]
