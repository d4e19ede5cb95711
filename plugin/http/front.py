"""What every endpoint of the HTTP front shares: the engine client, the served model's name, request
decoding with field-naming errors, the trace id, and running a request so that a client who hangs up
aborts it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, TypeVar

import msgspec
from starlette.requests import Request

from ..client import Client, Prompt, Result
from .errors import HTTPError, from_engine
from .wire import ROUTING_KEY_HEADER

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The HTTP client hung up before its answer was ready (its engine request was aborted)."""


@dataclass
class Front:
    """The engine behind the front (`client`, a ZeroMQ client), the name it serves the model under, and
    the engine's context length (the default `max_tokens`)."""

    client: Client
    model: str
    max_context: int
    api_key: str | None = None


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None


async def decode(request: Request, kind: type[T]) -> T:
    """The request body as `kind`; 400 naming the field for a wrong type or an unknown field."""
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise HTTPError(400, f"invalid request: {exc}", param=_param_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None


def _param_of(message: str) -> str | None:
    if "unknown field `" in message:
        return message.split("unknown field `", 1)[1].split("`", 1)[0]
    if "at `$." in message:
        return message.rsplit("at `$.", 1)[1].split("`", 1)[0].split("[", 1)[0].split(".", 1)[0]
    return None


def trace_id(request: Request, *candidates: str | None) -> str | None:
    """The first of `candidates` (prompt_cache_key, user) that is set, else the routing-key header."""
    for value in candidates:
        if value:
            return value
    return request.headers.get(ROUTING_KEY_HEADER) or None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work` (an engine call); if the HTTP client hangs up first, cancel it, which aborts the
    request in the engine. Engine failures become HTTPErrors."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnected()
    try:
        return task.result()
    except HTTPError:
        raise
    except Exception as exc:
        raise from_engine(exc) from exc


async def generate_all(front: Front, requests: list[tuple[Prompt, dict[str, Any]]]) -> list[list[Result]]:
    """The results of (prompt, engine options) requests run at once: a list per request (n results)."""
    outs = await asyncio.gather(*(front.client.aio.generate(prompt, **opts) for prompt, opts in requests))
    return [out if isinstance(out, list) else [out] for out in outs]


async def first_then_rest(items: AsyncIterator[T]) -> tuple[T | None, AsyncIterator[T]]:
    """Await the first item of a stream (the engine validates the request before it sends anything), so a
    bad request is answered with an error status instead of a broken stream."""
    try:
        first = await items.__anext__()
    except StopAsyncIteration:
        return None, items
    except Exception as exc:
        await items.aclose()
        raise from_engine(exc) from exc
    return first, items


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
