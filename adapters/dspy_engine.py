"""DSPy 3.4 engine-contract objects over a radixlm `Client`: `complete(Request) -> Response` and
`stream(Request)` of lm15 events, sync and asyncio. DSPy keeps its cache, retries, n-candidate
fan-out, history, usage tracking and callbacks; each call here is one engine generation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from dspy.lm15 import Request, Response

import radixlm
from radixlm.client import Client

from .dspy_mapping import (StreamAssembler, check_streamable, request_messages, request_options, to_response,
                           translate_error)


class RadixEngine:
    """Synchronous DSPy engine on a radixlm `Client` (thread-safe: concurrent calls from
    `module.batch` / `dspy.Parallel` threads reach the engine together and batch there)."""

    supports_function_calling = True
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
        opts = request_options(request, self.trace_id)
        try:
            result = self.client.generate(request_messages(request), **opts)
        except Exception as exc:
            raise translate_error(exc) from exc
        return to_response(request, result, opts.get("trace_id"))

    def stream(self, request: Request) -> Iterator:
        check_streamable(request)
        opts = request_options(request, self.trace_id)
        asm = StreamAssembler(request.model, opts.get("trace_id"))
        try:
            items = self.client.stream(request_messages(request), include_result=True, **opts)
            first = next(items)  # the request is validated before the stream starts
        except Exception as exc:
            raise translate_error(exc) from exc
        yield asm.start()
        try:
            yield from asm.events(first)
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    return
                except Exception as exc:
                    raise translate_error(exc) from exc
                yield from asm.events(item)
        finally:
            items.close()  # leaving early aborts the generation in the engine

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
        opts = request_options(request, self.sync.trace_id)
        try:
            result = await self.sync.client.aio.generate(request_messages(request), **opts)
        except Exception as exc:
            raise translate_error(exc) from exc
        return to_response(request, result, opts.get("trace_id"))

    async def stream(self, request: Request) -> AsyncIterator:
        check_streamable(request)
        opts = request_options(request, self.sync.trace_id)
        asm = StreamAssembler(request.model, opts.get("trace_id"))
        items = self.sync.client.aio.stream(request_messages(request), include_result=True, **opts)
        try:
            try:
                first = await items.__anext__()
            except Exception as exc:
                raise translate_error(exc) from exc
            yield asm.start()
            for event in asm.events(first):
                yield event
            while True:
                try:
                    item = await items.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise translate_error(exc) from exc
                for event in asm.events(item):
                    yield event
        finally:
            await items.aclose()

    async def aclose(self) -> None:
        self.sync.close()

    def dump_state(self) -> dict[str, Any]:
        return self.sync.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncRadixEngine:
        return cls(RadixEngine.load_state(state))
