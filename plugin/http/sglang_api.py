"""SGLang-native endpoints: `/generate` (text or input_ids, one or a batch, `sampling_params`,
`return_logprob` / `logprob_start_len` / `top_logprobs_num`, `stream`; `max_new_tokens: 0` computes and
caches the prompt only, SGLang's prefix hint), `/get_model_info`, `/get_server_info`, `/flush_cache`,
`/health` and `/health_generate` (and radixlm's `/end_trace`): what SGLang's frontend (`RuntimeEndpoint`) and SGLang's model gateway
(`smg`) need of a worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .. import __version__
from ..client import StreamChunk
from ..protocol import Result
from .errors import HTTPError, from_engine
from .front import SSE_DONE, Front, first_then_rest, generate_all, read_json, sse, trace_id, until_disconnect

# `messages` (chat messages rendered with the model's template) and the `lark` / `choices` constraints are
# radixlm's extensions of SGLang's request; the httpx client uses them against a radixlm server only.
GENERATE_FIELDS = {"text", "input_ids", "messages", "sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num",
                   "return_text_in_logprobs", "stream", "rid", "routing_key", "conversation_id"}
# SGLang request fields with no effect on the result (bookkeeping; what smg adds when it forwards a request).
IGNORED_FIELDS = {"model", "log_metrics", "no_logs", "custom_labels", "received_time", "priority",
                  "external_trace_header", "session_id", "routed_dp_rank", "data_parallel_rank"}
# SGLang request fields this engine has no feature for: accepted only unset (null, false, empty).
UNSET_FIELDS = {"input_embeds", "image_data", "video_data", "audio_data", "mm_hashes", "mm_content_hashes",
                "use_audio_in_video", "video_config", "watermark", "token_ids_logprob", "return_sampling_mask",
                "sampling_logprobs_mode", "return_flat_raw_top_logprobs", "return_flat_raw_output_top_logprobs",
                "return_hidden_states", "return_routed_experts", "routed_experts_start_len", "return_indexer_topk",
                "modalities", "session_params", "lora_path", "lora_id", "custom_logit_processor",
                "positional_embed_overrides", "bootstrap_host", "bootstrap_port", "bootstrap_room",
                "bootstrap_pair_key", "decode_tp_size", "disagg_prefill_dp_rank", "background", "require_reasoning",
                "max_thinking_tokens", "extra_key", "return_bytes", "return_entropy", "return_prompt_token_ids",
                "cache_salt"}
# SGLang sampling parameters mapped onto the engine's options (same name unless given).
SAMPLING_NAMES = {"max_new_tokens": "max_new_tokens", "min_new_tokens": "min_new_tokens", "n": "n", "stop": "stop",
                  "stop_token_ids": "stop_token_ids", "temperature": "temperature", "top_p": "top_p",
                  "top_k": "top_k", "min_p": "min_p", "frequency_penalty": "frequency_penalty",
                  "presence_penalty": "presence_penalty", "repetition_penalty": "repetition_penalty",
                  "ignore_eos": "ignore_eos", "regex": "regex", "json_schema": "json_schema", "lark": "lark",
                  "choices": "choices",
                  "sampling_seed": "seed", "seed": "seed"}
# SGLang sampling parameters accepted only at their default value (what this engine always does).
FIXED_SAMPLING = {"skip_special_tokens": True, "spaces_between_special_tokens": True, "no_stop_trim": False,
                  "stop_regex": None, "ebnf": None, "structural_tag": None, "custom_params": None, "logit_bias": None}


def _sampling(params: Any) -> dict[str, Any]:
    """Engine options of one SGLang `sampling_params` object."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise HTTPError(400, "sampling_params must be an object")
    opts: dict[str, Any] = {}
    for key, value in params.items():
        if key in FIXED_SAMPLING:
            if value not in (FIXED_SAMPLING[key], None) and not (key == "stop_regex" and value in ((), [])):
                raise HTTPError(400, f"sampling_params.{key}={value!r} is not supported by this engine")
        elif key not in SAMPLING_NAMES:
            raise HTTPError(400, f"unknown sampling parameter {key!r}")
        elif value is not None:
            opts[SAMPLING_NAMES[key]] = value
    if opts.get("top_k") == -1:  # SGLang's "no top-k"
        opts["top_k"] = 0
    if not opts.get("stop"):  # "" and [] mean no stop
        opts.pop("stop", None)
    if opts.get("max_new_tokens") == 0:
        opts["prefix_only"] = True
        opts.pop("max_new_tokens")
    return opts


def _item(value: Any, i: int, batch: bool) -> Any:
    return value[i] if batch and isinstance(value, list) else value


def _requests(body: dict) -> tuple[list[tuple[str | list[int], dict[str, Any]]], bool]:
    """([(prompt, engine options)], is_batch) of a /generate body."""
    unknown = set(body) - GENERATE_FIELDS - IGNORED_FIELDS - UNSET_FIELDS
    if unknown:
        raise HTTPError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
    for name in sorted(UNSET_FIELDS & set(body)):
        if body[name]:
            raise HTTPError(400, f"{name} is not supported by this engine")
    text, ids, messages = body.get("text"), body.get("input_ids"), body.get("messages")
    if sum(x is not None for x in (text, ids, messages)) != 1:
        raise HTTPError(400, "give exactly one of text, input_ids and messages")
    if messages is not None:
        batch = False
        prompts = [messages]
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
            raise HTTPError(400, "messages must be a non-empty list of {role, content} objects")
    elif text is not None:
        batch = isinstance(text, list)
        prompts = text if batch else [text]
        if not all(isinstance(p, str) for p in prompts):
            raise HTTPError(400, "text must be a string or a list of strings")
    else:
        batch = isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)
        prompts = ids if batch else [ids]
        if not all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompts):
            raise HTTPError(400, "input_ids must be a list of token ids or a list of such lists")
    out = []
    for i, prompt in enumerate(prompts):
        opts = _sampling(_item(body.get("sampling_params"), i, batch))
        if _item(body.get("return_logprob"), i, batch):
            if not opts.get("prefix_only"):
                opts["logprobs"] = True
            top = _item(body.get("top_logprobs_num"), i, batch)
            if top:
                opts["top_logprobs"] = top
            start = _item(body.get("logprob_start_len"), i, batch)
            if start is not None and start >= 0:
                opts["logprob_start_len"] = start
        out.append((prompt, opts))
    return out, batch


def _logprobs(entries: list | None, with_text: bool) -> list | None:
    if entries is None:
        return None
    return [[None, None, None] if e is None else [e[0], e[1], e[2] if with_text else None] for e in entries]


def _tops(lists: list | None, with_text: bool) -> list | None:
    return None if lists is None else [_logprobs(t, with_text) for t in lists]


def meta_info(rid: str, r: Result, opts: dict[str, Any], with_text: bool, started: float) -> dict[str, Any]:
    if opts.get("prefix_only"):  # SGLang reports its max_new_tokens=0 prefix hint this way
        finish: dict[str, Any] = {"type": "length", "length": 0}
    elif r.finish_reason == "length":
        finish = {"type": "length", "length": r.completion_tokens}
    elif r.finish_reason == "stop":
        finish = {"type": "stop", "matched": r.matched_stop}
    else:
        finish = {"type": r.finish_reason}
    meta: dict[str, Any] = {"id": rid, "finish_reason": finish, "prompt_tokens": r.prompt_tokens,
                            "completion_tokens": r.completion_tokens, "cached_tokens": r.cached_tokens,
                            "e2e_latency": time.perf_counter() - started}
    if "logprobs" in opts or "logprob_start_len" in opts:
        meta["input_token_logprobs"] = _logprobs(r.prompt_logprobs, with_text) or []
        meta["output_token_logprobs"] = _logprobs(r.output_logprobs, with_text) or []
        if "top_logprobs" in opts:
            meta["input_top_logprobs"] = _tops(r.prompt_top_logprobs, with_text) or []
            meta["output_top_logprobs"] = _tops(r.output_top_logprobs, with_text) or []
    return meta


async def generate(front: Front, request: Request):
    body = await read_json(request)
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    reqs, batch = _requests(body)
    trace = trace_id(request, *(v for v in (body.get("routing_key"), body.get("conversation_id")) if isinstance(v, str)))
    if trace:
        for _, opts in reqs:
            opts["trace_id"] = trace
    with_text = bool(body.get("return_text_in_logprobs"))
    rid = body.get("rid") if isinstance(body.get("rid"), str) else uuid.uuid4().hex
    started = time.perf_counter()
    if body.get("stream"):
        if batch:
            raise HTTPError(400, "streaming takes one prompt per request")
        prompt, opts = reqs[0]
        items = front.client.aio.stream(prompt, include_result=True, **opts)
        first, rest = await first_then_rest(items)
        return StreamingResponse(_events(rid, first, rest, opts, with_text, started), media_type="text/event-stream")
    outs = await until_disconnect(request, generate_all(front, reqs))
    answers = [{"text": r.text, "output_ids": r.output_ids, "meta_info": meta_info(rid, r, opts, with_text, started)}
               for (_, opts), results in zip(reqs, outs) for r in results]
    return JSONResponse(answers if batch or len(answers) > 1 else answers[0])


async def _events(rid: str, first: Any, rest: AsyncIterator, opts: dict, with_text: bool,
                  started: float) -> AsyncIterator[bytes]:
    """SSE of a streamed /generate: each event carries the text and ids so far (SGLang's format)."""
    text, ids = "", []
    try:
        item = first
        while item is not None:
            if isinstance(item, StreamChunk):
                text, ids = text + item.text, ids + item.token_ids
                yield sse({"text": text, "output_ids": ids,
                           "meta_info": {"id": rid, "finish_reason": None, "completion_tokens": len(ids)}})
            else:
                yield sse({"text": item.text, "output_ids": item.output_ids,
                           "meta_info": meta_info(rid, item, opts, with_text, started)})
            item = await anext(rest, None)
        yield SSE_DONE
    finally:
        await rest.aclose()


async def model_info(front: Front, request: Request):
    info = await _engine(front.client.info)
    return JSONResponse({"model_path": front.model, "tokenizer_path": front.model, "is_generation": True,
                         "model_type": info.get("model_type"), "preferred_sampling_params": None,
                         "weight_version": "default", "has_image_understanding": False,
                         "has_audio_understanding": False, "max_context": info.get("max_context")})


async def server_info(front: Front, request: Request):
    info = await _engine(front.client.info)
    stats = await _engine(front.client.stats)
    return JSONResponse({"engine": "radixlm", "version": __version__, "model_path": front.model,
                         "context_length": front.max_context, **info, "stats": stats})


async def flush_cache(front: Front, request: Request):
    await _engine(front.client.flush_cache)
    return PlainTextResponse("Cache flushed.\n")


async def end_trace(front: Front, request: Request):
    """radixlm's extension beside SGLang's routes: `{"trace_id": ...}` ends that agent trace, so the engine
    releases the KV it kept for it (what `radixlm.Client.end_trace` does over ZeroMQ)."""
    body = await read_json(request)
    tid = body.get("trace_id") if isinstance(body, dict) else None
    if not isinstance(tid, str) or not tid:
        raise HTTPError(400, 'end_trace needs {"trace_id": "<non-empty string>"}', param="trace_id")
    return JSONResponse(await _engine(lambda: front.client.end_trace(tid)))


async def health(front: Front, request: Request):
    try:
        await _engine(front.client.ping)
    except HTTPError as err:
        return PlainTextResponse(err.message, status_code=503)
    return Response(status_code=200)


async def health_generate(front: Front, request: Request):
    """Healthy when the engine completes a one-token generation."""
    try:
        await until_disconnect(request, front.client.aio.generate([0], max_new_tokens=1))
    except HTTPError as err:
        return PlainTextResponse(err.message, status_code=503)
    return Response(status_code=200)


async def _engine(call) -> Any:
    """Run a blocking control call of the ZeroMQ client (info, stats, ping, flush) off the event loop."""
    try:
        return await asyncio.to_thread(call)
    except Exception as exc:
        raise from_engine(exc) from exc
