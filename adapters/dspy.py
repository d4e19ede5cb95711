"""DSPy on the radixlm engine, through DSPy 3.4's canonical engine contract.

    import dspy
    from radixlm.adapters.dspy import LM
    dspy.configure(lm=LM("smollm2"))          # attaches to (or spawns) the local engine

`LM(...)` returns a plain `dspy.LM` whose `engine=` / `async_engine=` are a `RadixEngine` /
`AsyncRadixEngine` pair. DSPy keeps owning its response cache, retries, n-candidate fan-out,
history, usage tracking and callbacks; the engine performs exactly one generation per
`complete(Request) -> Response` (or one `stream(Request)` of lm15 stream events).

Mapping of a canonical `dspy.lm15.Request`:
  * `system` + `messages` (text parts only) -> chat messages; the engine renders them with the
    model's own chat template, so the radix cache sees identical prefixes across calls.
  * Config: max_tokens -> max_new_tokens, temperature, top_p, top_k, stop, seed,
    frequency_penalty, presence_penalty; logprobs (0: chosen tokens, k > 0: plus top-k);
    response_format json_schema -> the engine's json_schema constraint, json_object -> a
    constraint to any JSON object; Config.cache (provider prompt caching) is accepted and
    needs nothing: prefix reuse is automatic.
  * Config.extensions pass through as engine generation options (min_p, repetition_penalty,
    regex, choices, lark, min_new_tokens, stop_token_ids, ignore_eos, trace_id).
  * Refused with `UnsupportedFeatureError`: tools / tool_choice (no native function calling;
    DSPy's ReAct and the Chat/JSON adapters work through text instead), reasoning, images or
    other non-text parts, service_tier / user_id / store, probabilities="required".
Usage: input_tokens = prompt tokens, output_tokens = generated tokens, cache_read_tokens =
prompt tokens served from the radix cache (DSPy's usage tracker shows them as
prompt_tokens_details.cached_tokens).

Agent traces: while a DSPy module runs, every LM call made inside its outermost module call
carries one `trace_id` (see `client.stats()["traces"]`). `LM(..., trace=True)` (the default)
installs `TraceCallback` in `dspy.settings.callbacks` once; `trace(...)` groups calls by hand.
The id lives in DSPy's thread-local overrides, so `dspy.Parallel` workers inside a traced module
inherit it, while each top-level `module.batch` example gets its own.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dspy
from dspy.dsp.utils.settings import thread_local_overrides
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
from dspy.utils.callback import BaseCallback

import radixlm
from radixlm import protocol as P
from radixlm.client import Client, _generate_message
from radixlm.connection import EngineDiedError, EngineError

__all__ = ["LM", "RadixEngine", "AsyncRadixEngine", "JSONAdapter", "ChatAdapter", "TraceCallback", "trace",
           "current_trace_id"]

PROVIDER = "radixlm"
_TRACE_KEY = "radixlm_trace_id"
# Engine generation options a caller may pass through Config.extensions.
_EXTENSION_OPTIONS = frozenset({
    "min_p", "repetition_penalty", "min_new_tokens", "stop_token_ids", "ignore_eos",
    "regex", "choices", "lark", "json_schema", "trace_id",
})
_FINISH = {"stop": "stop", "length": "length"}


# ─── agent traces ──────────────────────────────────────────────────────


def current_trace_id() -> str | None:
    """The trace id the LM calls of the current DSPy module call carry (None outside one)."""
    return thread_local_overrides.get().get(_TRACE_KEY)


def _set_trace(trace_id: str):
    return thread_local_overrides.set({**thread_local_overrides.get(), _TRACE_KEY: trace_id})


@contextlib.contextmanager
def trace(trace_id: str | None = None):
    """Group every LM call inside this block under one trace id (a new one if not given);
    an enclosing trace wins unless `trace_id` is given explicitly."""
    current = current_trace_id()
    if trace_id is None and current is not None:
        yield current
        return
    trace_id = trace_id or uuid.uuid4().hex
    token = _set_trace(trace_id)
    try:
        yield trace_id
    finally:
        thread_local_overrides.reset(token)


class TraceCallback(BaseCallback):
    """Opens a trace id at the outermost DSPy module call and closes it when that call ends.

    DSPy runs module callbacks in the caller's thread and context (sync and async), immediately
    around the module call, so the id set here is visible to every LM call the module makes."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}
        self._lock = threading.Lock()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if current_trace_id() is None:
            token = _set_trace(uuid.uuid4().hex)
            with self._lock:
                self._open[call_id] = token

    def on_module_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        with self._lock:
            token = self._open.pop(call_id, None)
        if token is not None:
            try:
                thread_local_overrides.reset(token)
            except ValueError:  # created in another context; leave that context to end by itself
                pass


_install_lock = threading.Lock()


def _install_trace_callback() -> None:
    with _install_lock:
        callbacks = list(dspy.settings.get("callbacks", []) or [])
        if any(isinstance(cb, TraceCallback) for cb in callbacks):
            return
        dspy.settings.configure(callbacks=[*callbacks, TraceCallback()])


# ─── request / response mapping ────────────────────────────────────────


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


def _messages(request: Request) -> list[dict[str, str]]:
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


def _options(request: Request, default_trace: str | None) -> dict[str, Any]:
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
        if key not in _EXTENSION_OPTIONS:
            raise InvalidRequestError(f"radixlm: unknown generation option {key!r} (known: "
                                      f"{', '.join(sorted(_EXTENSION_OPTIONS))})", provider=PROVIDER)
        opts[key] = value
    constraints = [k for k in ("json_schema", "regex", "choices", "lark") if opts.get(k) is not None]
    if len(constraints) > 1:
        raise InvalidRequestError(f"radixlm: one constraint per request, got {constraints}", provider=PROVIDER)
    trace_id = opts.get("trace_id") or current_trace_id() or default_trace
    if trace_id is not None:
        opts["trace_id"] = trace_id
    return opts


def _usage(prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> Usage:
    return Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens, cache_read_tokens=cached_tokens)


def _logprobs(done: P.Done) -> tuple[TokenLogprob, ...] | None:
    if done.output_logprobs is None:
        return None
    tops = done.output_top_logprobs or [[] for _ in done.output_logprobs]
    return tuple(
        TokenLogprob(token=text, logprob=float(lp), token_id=tid,
                     top=tuple(TopLogprob(token=t, logprob=float(l), token_id=i) for l, i, t in top))
        for (lp, tid, text), top in zip(done.output_logprobs, tops)
    )


def _finish(done: P.Done) -> str:
    reason = _FINISH.get(done.finish_reason)
    if reason is None:
        raise ServerError(f"radixlm: generation ended with {done.finish_reason!r}", provider=PROVIDER)
    return reason


def _provider_data(done: P.Done, trace_id: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"cached_tokens": done.usage.cached_tokens}
    if done.matched_stop is not None:
        data["matched_stop"] = done.matched_stop
    if trace_id is not None:
        data["trace_id"] = trace_id
    return data


def _response(model: str, done: P.Done, trace_id: str | None) -> Response:
    u = done.usage
    return Response(id=None, model=model, message=Message.assistant([TextPart(done.text)]),
                    finish_reason=_finish(done), usage=_usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens),
                    logprobs=_logprobs(done), provider_data=_provider_data(done, trace_id))


def _translate(exc: BaseException) -> BaseException:
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


class _Assembler:
    """Turns the engine's Chunk / Done replies into lm15 stream events."""

    def __init__(self, model: str, trace_id: str | None) -> None:
        self.model, self.trace_id, self.sent = model, trace_id, ""

    def start(self) -> StreamStartEvent:
        return StreamStartEvent(model=self.model)

    def events(self, reply: P.Response) -> list:
        if isinstance(reply, P.Chunk):
            if not reply.text:
                return []
            self.sent += reply.text
            return [StreamDeltaEvent(TextDelta(reply.text))]
        if isinstance(reply, P.Done):
            out = []
            if reply.text.startswith(self.sent) and len(reply.text) > len(self.sent):
                out.append(StreamDeltaEvent(TextDelta(reply.text[len(self.sent):])))
            u = reply.usage
            out.append(StreamEndEvent(finish_reason=_finish(reply),
                                      usage=_usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens),
                                      provider_data=_provider_data(reply, self.trace_id)))
            return out
        return []


# ─── engines ───────────────────────────────────────────────────────────


class RadixEngine:
    """Synchronous DSPy engine on a radixlm `Client` (thread-safe: concurrent calls from
    `module.batch` / `dspy.Parallel` threads reach the engine together and batch there)."""

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = True
    supported_params = frozenset({
        "temperature", "max_tokens", "top_p", "top_k", "stop", "seed", "n", "logprobs", "top_logprobs",
        "frequency_penalty", "presence_penalty", "response_format", "stream",
    })

    def __init__(self, client: Client, model: str = "smollm2", *, endpoint: str | None = None,
                 owns_client: bool = False, trace_id: str | None = None) -> None:
        self.client, self.model, self.endpoint = client, model, endpoint
        self.owns_client, self.trace_id = owns_client, trace_id

    def complete(self, request: Request) -> Response:
        opts = _options(request, self.trace_id)
        try:
            done = self._done(_messages(request), opts)
        except Exception as exc:
            raise _translate(exc) from exc
        return _response(request.model, done, opts.get("trace_id"))

    def _done(self, messages, opts) -> P.Done:
        msg = _generate_message(self.client.conn.new_rid(), messages, False, opts)
        for reply in self.client._call(msg):
            if isinstance(reply, P.Done):
                return reply
        raise ServerError("radixlm: reply stream ended without a result", provider=PROVIDER)

    def stream(self, request: Request) -> Iterator:
        opts = _options(request, self.trace_id)
        messages = _messages(request)
        asm = _Assembler(request.model, opts.get("trace_id"))
        try:
            msg = _generate_message(self.client.conn.new_rid(), messages, True, opts)
        except Exception as exc:
            raise _translate(exc) from exc
        yield asm.start()
        replies = self.client._call(msg)
        try:
            while True:
                try:
                    reply = next(replies)
                except StopIteration:
                    return
                except Exception as exc:
                    raise _translate(exc) from exc
                yield from asm.events(reply)
        finally:
            replies.close()  # leaving early aborts the generation in the engine

    def close(self) -> None:
        if self.owns_client:
            self.client.close()

    # Saving a program with this LM records where the engine is, not a live connection.
    def dump_state(self) -> dict[str, Any]:
        return {"model": self.model, "endpoint": self.endpoint}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> RadixEngine:
        client = radixlm.connect(state.get("endpoint"), state.get("model", "smollm2"))
        return cls(client, state.get("model", "smollm2"), endpoint=state.get("endpoint"), owns_client=True)


class AsyncRadixEngine:
    """asyncio twin of `RadixEngine` on the same connection (`client.aio`)."""

    def __init__(self, sync: RadixEngine) -> None:
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        opts = _options(request, self.sync.trace_id)
        messages = _messages(request)
        client = self.sync.client
        try:
            msg = _generate_message(client.conn.new_rid(), messages, False, opts)
            calls = client.aio._call(msg)
            done = None
            try:
                async for reply in calls:
                    if isinstance(reply, P.Done):
                        done = reply
            finally:
                await calls.aclose()
        except Exception as exc:
            raise _translate(exc) from exc
        if done is None:
            raise ServerError("radixlm: reply stream ended without a result", provider=PROVIDER)
        return _response(request.model, done, opts.get("trace_id"))

    async def stream(self, request: Request) -> AsyncIterator:
        opts = _options(request, self.sync.trace_id)
        messages = _messages(request)
        client = self.sync.client
        asm = _Assembler(request.model, opts.get("trace_id"))
        try:
            msg = _generate_message(client.conn.new_rid(), messages, True, opts)
        except Exception as exc:
            raise _translate(exc) from exc
        yield asm.start()
        calls = client.aio._call(msg)
        try:
            while True:
                try:
                    reply = await calls.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise _translate(exc) from exc
                for event in asm.events(reply):
                    yield event
        finally:
            await calls.aclose()

    async def aclose(self) -> None:
        self.sync.close()


# ─── the public factory ────────────────────────────────────────────────


def LM(model: str = "smollm2", endpoint: str | None = None, *, client: Client | None = None,
       temperature: float | None = 0.0, max_tokens: int | None = 512, cache: bool = True,
       num_retries: int = 3, timeout: float | None = None, trace: bool = True,
       engine_options: dict[str, Any] | None = None, **kwargs: Any) -> dspy.LM:
    """A `dspy.LM` served by the radixlm engine.

    model: engine model alias (e.g. "smollm2") or path, used when an engine must be spawned.
    endpoint: engine address (default: the user's ipc socket); attaches to a running engine or
        spawns one there (`radixlm.connect`). `client=` reuses an existing `radixlm.Client` instead.
    temperature / max_tokens / other kwargs (top_p, top_k, stop, seed, ...): default generation
        options, overridable per call like any dspy.LM.
    cache / num_retries / callbacks / ...: DSPy's own LM settings (its response cache and retries).
    timeout: seconds each engine call may take (None: no limit).
    trace: install `TraceCallback` so all LM calls of one outermost module call share a trace id.
    engine_options: EngineConfig fields for a spawned engine.
    """
    owns = client is None
    if client is None:
        client = radixlm.connect(endpoint, model, timeout=timeout, **(engine_options or {}))
    engine = RadixEngine(client, model, endpoint=endpoint, owns_client=owns)
    if trace:
        _install_trace_callback()
    return dspy.LM(f"radixlm/{model}", engine=engine, async_engine=AsyncRadixEngine(engine),
                   temperature=temperature, max_tokens=max_tokens, cache=cache, num_retries=num_retries,
                   **kwargs)


# ─── adapters that use the engine's grammar-constrained decoding ───────


def _output_schema(signature, use_native_function_calling: bool, flat_mappings: bool = True) -> dict[str, Any]:
    """A JSON schema of the signature's output fields that the engine can enforce. Unlike
    DSPy's OpenAI-strict schema it allows open-ended mappings (dict[str, Any] -> any object), so
    e.g. ReAct's next_tool_name is held to its Literal of tool names instead of free JSON.
    `flat_mappings`: an open dict[str, Any] field takes scalar values only (a subset of what the
    annotation allows) so a small model cannot recurse into nested objects until max_tokens."""
    import pydantic
    from dspy.adapters.types.tool import ToolCalls

    fields = {}
    for name, field in signature.output_fields.items():
        if use_native_function_calling and field.annotation == ToolCalls:
            continue
        fields[name] = (field.annotation, ...)
    schema = pydantic.create_model("DSPyProgramOutputs", **fields).model_json_schema()
    for prop in schema.get("properties", {}).values():
        prop.pop("json_schema_extra", None)
        prop.pop("default", None)
        if flat_mappings and prop.get("type") == "object" and prop.get("additionalProperties") is True \
                and "properties" not in prop:
            prop["additionalProperties"] = {"type": ["string", "number", "boolean", "null"]}
    schema["required"] = list(schema.get("properties", {}))
    schema["additionalProperties"] = False
    return schema


class JSONAdapter(dspy.JSONAdapter):
    """dspy.JSONAdapter that, on a radixlm LM, always sends the full output schema as a
    json_schema constraint (DSPy itself falls back to schema-less JSON mode for signatures with
    dict fields, such as ReAct's). Other LMs get DSPy's behaviour unchanged. A response_format
    passed by the caller wins. `flat_mappings=True` (default) holds dict[str, Any] fields (ReAct's
    tool arguments) to objects of scalar values; False allows any JSON values."""

    def __init__(self, *args: Any, flat_mappings: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flat_mappings = flat_mappings

    def _prepare_response_format(self, lm, lm_kwargs, signature):
        if not isinstance(getattr(lm, "engine", None), RadixEngine) or "response_format" in lm_kwargs:
            return super()._prepare_response_format(lm, lm_kwargs, signature)
        try:
            schema = _output_schema(signature, self.use_native_function_calling, self.flat_mappings)
        except Exception:
            return super()._prepare_response_format(lm, lm_kwargs, signature)
        lm_kwargs["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "DSPyProgramOutputs", "schema": schema}}


class ChatAdapter(dspy.ChatAdapter):
    """dspy.ChatAdapter whose fallback on an unparsable reply is the schema-constrained
    `JSONAdapter` above."""

    def _make_json_adapter_fallback(self):
        return JSONAdapter(use_native_function_calling=self.use_native_function_calling,
                           parallel_tool_calls=self.parallel_tool_calls)
