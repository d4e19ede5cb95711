"""Mapping between DSPy's canonical lm15 requests/responses and radixlm generation options/results.

  * `system` + `messages` (text parts only) -> chat messages; the engine renders them with the
    model's own chat template, so the radix cache sees identical prefixes across calls.
  * Config: max_tokens -> max_new_tokens, temperature, top_p, top_k, stop, seed,
    frequency_penalty, presence_penalty; logprobs (0: chosen tokens, k > 0: plus top-k);
    response_format json_schema -> the engine's json_schema constraint, json_object -> a
    constraint to any JSON object; Config.cache (provider prompt caching) needs nothing.
  * Config.extensions pass through as engine generation options (see EXTENSION_OPTIONS).
  * Refused with `UnsupportedFeatureError`: tools / tool_choice (no native function calling;
    DSPy's ReAct and the Chat/JSON adapters work through text instead), reasoning, images or
    other non-text parts, service_tier / user_id / store, probabilities="required".
Usage: input_tokens = prompt tokens, output_tokens = generated tokens, cache_read_tokens = prompt
tokens served from the radix cache."""

from __future__ import annotations

from typing import Any

from dspy.lm15 import (
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
    TopLogprob,
    UnsupportedFeatureError,
    Usage,
)
from dspy.lm15 import TimeoutError as LM15TimeoutError

from radixlm.client import Result, StreamChunk
from radixlm.connection import EngineDiedError, EngineError

from .dspy_trace import current_trace_id

PROVIDER = "radixlm"
# Engine generation options a caller may pass through Config.extensions.
EXTENSION_OPTIONS = frozenset({
    "min_p", "repetition_penalty", "min_new_tokens", "stop_token_ids", "ignore_eos",
    "regex", "choices", "lark", "json_schema", "trace_id",
})
_FINISH = {"stop": "stop", "length": "length"}


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


def request_messages(request: Request) -> list[dict[str, str]]:
    """The request's system prompt and messages as chat messages (text only)."""
    out = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else _text_of(request.system, "system")
        out.append({"role": "system", "content": system})
    for i, message in enumerate(request.messages):
        if message.role not in ("user", "assistant"):
            raise _unsupported("tools", f"message {i} has role {message.role!r}; tool messages need native "
                               "function calling, which radixlm does not offer")
        out.append({"role": message.role, "content": _text_of(message.parts, f"message {i}")})
    return out


def request_options(request: Request, default_trace: str | None) -> dict[str, Any]:
    """The engine generation options of a request; raises lm15 errors for what is not supported."""
    if not isinstance(request, Request):
        raise TypeError("An engine requires a dspy.lm15.Request")
    if request.tools:
        raise _unsupported("tools", "tools / native function calling are not supported; use DSPy's text-based "
                           "tool use (dspy.ReAct with ChatAdapter or JSONAdapter)")
    c = request.config
    if c.tool_choice is not None:
        raise _unsupported("tool_choice", "tool_choice is not supported")
    if c.reasoning is not None:
        raise _unsupported("reasoning", "reasoning controls are not supported")
    for name in ("service_tier", "user_id", "store"):
        if getattr(c, name) is not None:
            raise _unsupported(name, f"{name} has no meaning for a local engine")
    if c.probabilities == "required":
        raise _unsupported("probabilities", "probabilities are not supported")
    opts: dict[str, Any] = {}
    if c.max_tokens is not None:
        opts["max_new_tokens"] = c.max_tokens
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
    if c.response_format is not None:
        if c.response_format["type"] == "json_schema":
            opts["json_schema"] = c.response_format["schema"]
        else:
            opts["json_schema"] = {"type": "object"}
    for key, value in (c.extensions or {}).items():
        if key not in EXTENSION_OPTIONS:
            raise InvalidRequestError(f"radixlm: unknown generation option {key!r} (known: "
                                      f"{', '.join(sorted(EXTENSION_OPTIONS))})", provider=PROVIDER)
        opts[key] = value
    constraints = [k for k in ("json_schema", "regex", "choices", "lark") if opts.get(k) is not None]
    if len(constraints) > 1:
        raise InvalidRequestError(f"radixlm: one constraint per request, got {constraints}", provider=PROVIDER)
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


def to_response(model: str, result: Result, trace_id: str | None) -> Response:
    """A finished engine generation as an lm15 Response."""
    return Response(id=None, model=model, message=Message.assistant([TextPart(result.text)]),
                    finish_reason=_finish(result), usage=_usage(result), logprobs=_logprobs(result),
                    provider_data=_provider_data(result, trace_id))


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
