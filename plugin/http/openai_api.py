"""OpenAI-compatible endpoints: `/v1/chat/completions`, `/v1/completions` (both streaming as SSE) and
`/v1/models`. `usage.prompt_tokens_details.cached_tokens` reports the engine's prefix-cache hits."""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from ..client import StreamChunk
from ..protocol import Result, max_new_tokens_of
from .chat_tools import chat_request, reply_message
from .errors import HTTPError
from .front import SSE_DONE, Front, decode, first_then_rest, generate_all, sse, trace_id, until_disconnect
from .openai_schema import ChatCompletionRequest, CompletionRequest


def _check_model(front: Front, model: str) -> None:
    if model != front.model:
        raise HTTPError(404, f"The model `{model}` does not exist; this server serves `{front.model}`",
                        param="model", code="model_not_found")


# OpenAI's legacy /v1/completions writes 16 tokens when max_tokens is not given (its users expect that);
# a chat completion without max_tokens may fill the rest of the context.
COMPLETIONS_MAX_TOKENS = 16


def engine_options(front: Front, request: Request, body: ChatCompletionRequest | CompletionRequest,
                   max_tokens: int | None, default_max_tokens: int, logprobs: bool, top_logprobs: int | None,
                   top_param: str) -> dict[str, Any]:
    """Engine generation options of a request: the sampling fields OpenAI (and SGLang's / vLLM's
    extensions) define (`max_tokens`, `default_max_tokens` when None), output logprobs (`top_logprobs`,
    the request field `top_param`, in [0, 20]) and the trace id."""
    if top_logprobs is not None and not 0 <= top_logprobs <= 20:
        raise HTTPError(400, f"{top_param} must be in [0, 20], got {top_logprobs}", param=top_param)
    if body.logit_bias:
        raise HTTPError(400, "logit_bias is not supported", param="logit_bias")
    if max_tokens is not None and max_tokens < 1:
        raise HTTPError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    if body.n < 1:
        raise HTTPError(400, f"n must be at least 1, got {body.n}", param="n")
    if body.stream and body.n > 1:
        raise HTTPError(400, "streaming supports n = 1 only", param="n")
    opts: dict[str, Any] = {
        "max_new_tokens": max_new_tokens_of(max_tokens, default_max_tokens),
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "n": body.n, "frequency_penalty": body.frequency_penalty, "presence_penalty": body.presence_penalty,
        "ignore_eos": body.ignore_eos,
    }
    if body.stop:  # "" and [] mean no stop
        opts["stop"] = body.stop
    for name, key in (("top_p", "top_p"), ("seed", "seed"), ("top_k", "top_k"), ("min_p", "min_p"),
                      ("repetition_penalty", "repetition_penalty"), ("min_tokens", "min_new_tokens"),
                      ("stop_token_ids", "stop_token_ids"), ("regex", "regex")):
        value = getattr(body, name)
        if value is not None:
            opts[key] = value
    if logprobs:
        opts["logprobs"] = True
        if top_logprobs:
            opts["top_logprobs"] = top_logprobs
    trace = trace_id(request, body.prompt_cache_key, body.user)
    if trace:
        opts["trace_id"] = trace
    return opts


def usage(per_prompt: list[list[Result]]) -> dict[str, Any]:
    """OpenAI usage of one request's results, a list per prompt: each prompt counted once, completions summed."""
    firsts = [results[0] for results in per_prompt]
    prompt = sum(r.prompt_tokens for r in firsts)
    completion = sum(r.completion_tokens for results in per_prompt for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in firsts)}}


def _token_entry(lp: tuple) -> dict[str, Any]:
    return {"token": lp[2], "logprob": lp[0], "bytes": list(lp[2].encode("utf-8"))}


def chat_logprobs(r: Result) -> dict[str, Any] | None:
    if r.output_logprobs is None:
        return None
    tops = r.output_top_logprobs or [[] for _ in r.output_logprobs]
    return {"content": [{**_token_entry(lp), "top_logprobs": [_token_entry(t) for t in top]}
                        for lp, top in zip(r.output_logprobs, tops)]}


def completion_logprobs(r: Result) -> dict[str, Any] | None:
    if r.output_logprobs is None:
        return None
    offsets, at = [], 0
    for lp in r.output_logprobs:
        offsets.append(at)
        at += len(lp[2])
    tops = r.output_top_logprobs
    return {"tokens": [lp[2] for lp in r.output_logprobs], "token_logprobs": [lp[0] for lp in r.output_logprobs],
            "top_logprobs": None if tops is None else [{t[2]: t[0] for t in top} for top in tops],
            "text_offset": offsets}


def _include_usage(stream_options: dict | None) -> bool:
    return bool(stream_options and stream_options.get("include_usage"))


async def chat_completions(front: Front, request: Request):
    body = await decode(request, ChatCompletionRequest)
    _check_model(front, body.model)
    opts = engine_options(front, request, body, body.max_completion_tokens or body.max_tokens, front.max_context,
                          body.logprobs, body.top_logprobs, "top_logprobs")
    chat = chat_request(body.messages, body.tools, body.tool_choice, body.response_format, opts)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "created": created, "model": front.model}
    if body.stream:
        items = front.client.aio.stream(chat.messages, include_result=True, **chat.options)
        first, rest = await first_then_rest(items)
        return StreamingResponse(_chat_events(head, first, rest, chat.reply_format, _include_usage(body.stream_options),
                                              body.logprobs), media_type="text/event-stream")
    out = await until_disconnect(request, front.client.aio.generate(chat.messages, **chat.options))
    results = out if isinstance(out, list) else [out]
    choices = []
    for i, r in enumerate(results):
        message, finish = reply_message(r.text, r.finish_reason, chat.reply_format)
        choices.append({"index": i, "message": message, "logprobs": chat_logprobs(r), "finish_reason": finish})
    return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": usage([results])})


async def _chat_events(head: dict, first: Any, rest: AsyncIterator, reply_format: str | None,
                       include_usage: bool, logprobs: bool) -> AsyncIterator[bytes]:
    """SSE chunks of a streamed chat completion. A grammar reply (tools) is sent whole with the last
    chunk, so that the client always sees a complete tool call."""
    def chunk(delta: dict, finish: str | None = None, lp: dict | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        item = first
        while item is not None:
            if isinstance(item, StreamChunk):
                if item.text and reply_format is None:
                    yield chunk({"content": item.text})
            else:
                message, finish = reply_message(item.text, item.finish_reason, reply_format)
                delta = {k: v for k, v in message.items() if k != "role"} if reply_format else {}
                if "tool_calls" in delta:
                    delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
                yield chunk(delta, finish, chat_logprobs(item) if logprobs else None)
                if include_usage:
                    yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage([[item]])})
            item = await anext(rest, None)
        yield SSE_DONE
    finally:
        await rest.aclose()


def _prompts(prompt: Any) -> list[str | list[int]]:
    """The prompts of a completion request: a string, a list of strings, token ids, or lists of ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(t, int) for t in p)) for p in prompt):
        return list(prompt)
    raise HTTPError(400, "prompt must be a string, a list of strings, a list of token ids or a list of such lists",
                    param="prompt")


async def completions(front: Front, request: Request):
    body = await decode(request, CompletionRequest)
    _check_model(front, body.model)
    for name, ok in (("echo", not body.echo), ("suffix", body.suffix is None),
                     ("best_of", body.best_of in (None, body.n))):
        if not ok:
            raise HTTPError(400, f"{name} is not supported", param=name)
    prompts = _prompts(body.prompt)
    if body.stream and len(prompts) > 1:
        raise HTTPError(400, "streaming supports one prompt per request", param="prompt")
    opts = engine_options(front, request, body, body.max_tokens, COMPLETIONS_MAX_TOKENS,
                          body.logprobs is not None, body.logprobs, "logprobs")
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "created": created, "model": front.model}
    if body.stream:
        items = front.client.aio.stream(prompts[0], include_result=True, **opts)
        first, rest = await first_then_rest(items)
        return StreamingResponse(_completion_events(head, first, rest, _include_usage(body.stream_options)),
                                 media_type="text/event-stream")
    per_prompt = await until_disconnect(request, generate_all(front, [(p, opts) for p in prompts]))
    results = [r for prompt_results in per_prompt for r in prompt_results]
    choices = [{"index": i, "text": r.text, "logprobs": completion_logprobs(r), "finish_reason": r.finish_reason}
               for i, r in enumerate(results)]
    return JSONResponse({**head, "object": "text_completion", "choices": choices, "usage": usage(per_prompt)})


async def _completion_events(head: dict, first: Any, rest: AsyncIterator, include_usage: bool) -> AsyncIterator[bytes]:
    def chunk(text: str, finish: str | None = None, lp: dict | None = None) -> bytes:
        return sse({**head, "object": "text_completion",
                    "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}]})

    try:
        item = first
        while item is not None:
            if isinstance(item, StreamChunk):
                if item.text:
                    yield chunk(item.text)
            else:
                yield chunk("", item.finish_reason, completion_logprobs(item))
                if include_usage:
                    yield sse({**head, "object": "text_completion", "choices": [], "usage": usage([[item]])})
            item = await anext(rest, None)
        yield SSE_DONE
    finally:
        await rest.aclose()


async def models(front: Front, request: Request):
    return JSONResponse({"object": "list", "data": [{"id": front.model, "object": "model", "created": 0,
                                                     "owned_by": "radixlm", "max_model_len": front.max_context}]})
