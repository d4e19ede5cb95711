"""The httpx client: `radixlm.connect("http://host:port")` gives `HttpClient`, the same `generate` /
`stream` / `aio` API as the ZeroMQ `Client`, so the DSPy and LangChain adapters and the program language
run unchanged against another radixlm, an SGLang server, a vLLM server or any OpenAI-compatible one."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, AsyncIterator, Iterator

import httpx

from ..client import Prompt, Result, StreamChunk, _generate_message, hold_traces, release_traces
from ..connection import EngineDiedError
from .llamacpp_wire import OPENAPI_TITLE, LlamaCppPythonDialect
from .native_wire import NativeDialect
from .openai_wire import OpenAIDialect
from .wire import Call, Dialect, StreamParser, error_from_body

DIALECTS = ("radixlm", "sglang", "openai", "llama-cpp-python")


def _line_items(parser: StreamParser, line: str) -> list[StreamChunk | Result]:
    """The chunks and results one SSE line completes: those of its `data:` JSON, or of the stream's end at
    `data: [DONE]`; none for other lines."""
    if not line.startswith("data:"):
        return []
    payload = line[5:].strip()
    return parser.close() if payload == "[DONE]" else parser.feed(json.loads(payload))


def _error(resp: httpx.Response) -> Exception:
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = resp.text
    return error_from_body(resp.status_code, body)


@contextmanager
def _transport_errors(url: str) -> Iterator[None]:
    """httpx failures as the ZeroMQ client's: an unreachable or vanished server is EngineDiedError."""
    try:
        yield
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise EngineDiedError(f"the server at {url} is unreachable or went away: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"no answer from {url} in time: {exc}") from exc


def _collect(n: int, results: list[Result]) -> Result | list[Result]:
    return results if n > 1 else results[0]


class HttpClient:
    """Thread-safe synchronous client of an HTTP server in one of `DIALECTS`. `timeout` (seconds, None =
    wait forever) bounds each call; `api_key` is sent as a bearer token."""

    def __init__(self, base_url: str, dialect: Dialect, api_key: str | None = None,
                 timeout: float | None = None) -> None:
        self.base_url, self.dialect, self.timeout = base_url.rstrip("/"), dialect, timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http_timeout = httpx.Timeout(timeout, connect=10.0)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.http_timeout)
        self.aio = AsyncHttpClient(self)
        # Only a radixlm server keeps KV per trace; the trace ids other servers see are routing keys.
        self.open_traces: set[str] = set()
        if dialect.name == "radixlm":
            hold_traces(self)

    @property
    def endpoint(self) -> str:
        """The server's base URL (what `connect` takes to reach the same server again)."""
        return self.base_url

    def _call(self, prompt: Prompt, stream: bool, options: dict[str, Any]) -> tuple[int, Call]:
        msg = _generate_message("http", prompt, stream, options)
        if msg.trace_id is not None and self.dialect.name == "radixlm":
            self.open_traces.add(msg.trace_id)
        return msg.sampling.n, self.dialect.call(msg)

    def generate(self, prompt: Prompt, **options: Any) -> Result | list[Result]:
        """Generate from text, token ids, or chat messages (options as `radixlm.Client.generate`)."""
        n, call = self._call(prompt, False, options)
        resp = self._post(call.path, call.body, call.headers)
        return _collect(n, self.dialect.results(call, resp.json()))

    def stream(self, prompt: Prompt, include_result: bool = False, **options: Any) -> Iterator[StreamChunk | Result]:
        """Yield chunks as they arrive (and the final Result with `include_result`); closing the iterator
        early closes the HTTP stream, which aborts the request on a radixlm or SGLang server."""
        _, call = self._call(prompt, True, options)
        parser = self.dialect.stream_parser(call)
        with _transport_errors(self.base_url):
            with self.http.stream("POST", call.path, json=call.body, headers=call.headers) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error(resp)
                for line in resp.iter_lines():
                    for item in _line_items(parser, line):
                        if include_result or isinstance(item, StreamChunk):
                            yield item

    def _get(self, path: str) -> httpx.Response:
        with _transport_errors(self.base_url):
            resp = self.http.get(path)
        if resp.status_code >= 400:
            raise _error(resp)
        return resp

    def _post(self, path: str, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
        with _transport_errors(self.base_url):
            resp = self.http.post(path, json=body, headers=headers)
        if resp.status_code >= 400:
            raise _error(resp)
        return resp

    def _end_trace_call(self, trace_id: str) -> tuple[str, dict[str, str]]:
        if self.dialect.name != "radixlm":
            raise ValueError(f"only a radixlm server keeps KV per agent trace; this {self.dialect.name} "
                             "server has no trace to end")
        self.open_traces.discard(trace_id)
        return "/end_trace", {"trace_id": trace_id}

    def end_trace(self, trace_id: str) -> dict:
        """As `radixlm.Client.end_trace`: the radixlm server releases the KV it kept for `trace_id`."""
        return self._post(*self._end_trace_call(trace_id)).json()

    def end_trace_nowait(self, trace_id: str) -> None:
        """`end_trace` for `end_trace_everywhere` (over HTTP it waits: the reply is one short POST)."""
        try:
            self.end_trace(trace_id)
        except EngineDiedError:
            pass  # the server is gone, and the trace's KV with it

    def info(self) -> dict:
        """The server's description: radixlm's and SGLang's /get_server_info, or an OpenAI server's models."""
        if self.dialect.name == "openai":
            return {"models": [m["id"] for m in self._get("/v1/models").json()["data"]]}
        return self._get("/get_server_info").json()

    def stats(self, check_integrity: bool = False) -> dict:
        """A radixlm server's engine counters (as `radixlm.Client.stats`)."""
        if self.dialect.name != "radixlm" or check_integrity:
            raise ValueError("engine stats (and integrity checks) are a radixlm engine's; over HTTP only its "
                             "counters are served, at /get_server_info")
        return self._get("/get_server_info").json()["stats"]

    def ping(self) -> dict:
        resp = self._get("/health")
        return {"status": resp.status_code}

    def flush_cache(self) -> None:
        if self.dialect.name == "openai":
            raise ValueError("OpenAI-compatible servers have no cache flush endpoint")
        self._post("/flush_cache")

    def close(self) -> None:
        release_traces(self)
        self.http.close()


class AsyncHttpClient:
    """asyncio face of an HttpClient; cancelling a task or leaving a stream early closes its HTTP request."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def _http(self) -> httpx.AsyncClient:
        # One per call: an httpx.AsyncClient belongs to the event loop it was first used on.
        return httpx.AsyncClient(base_url=self.client.base_url, headers=self.client.headers,
                                 timeout=self.client.http_timeout)

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        async with self._http() as http:
            with _transport_errors(self.client.base_url):
                resp = await http.post(path, json=body, headers=headers)
        if resp.status_code >= 400:
            raise _error(resp)
        return resp

    async def generate(self, prompt: Prompt, **options: Any) -> Result | list[Result]:
        n, call = self.client._call(prompt, False, options)
        resp = await self._post(call.path, call.body, call.headers)
        return _collect(n, self.client.dialect.results(call, resp.json()))

    async def end_trace(self, trace_id: str) -> dict:
        """See `HttpClient.end_trace`."""
        return (await self._post(*self.client._end_trace_call(trace_id))).json()

    async def stream(self, prompt: Prompt, include_result: bool = False,
                     **options: Any) -> AsyncIterator[StreamChunk | Result]:
        _, call = self.client._call(prompt, True, options)
        parser = self.client.dialect.stream_parser(call)
        async with self._http() as http:
            with _transport_errors(self.client.base_url):
                async with http.stream("POST", call.path, json=call.body, headers=call.headers) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise _error(resp)
                    async for line in resp.aiter_lines():
                        for item in _line_items(parser, line):
                            if include_result or isinstance(item, StreamChunk):
                                yield item


def detect_dialect(base_url: str, api_key: str | None, model: str) -> Dialect:
    """radixlm when /get_server_info says so, SGLang when it answers otherwise, llama-cpp-python's server when
    its OpenAPI description has that server's title, else OpenAI."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = base_url.rstrip("/")
    with _transport_errors(base_url):
        resp = httpx.get(base + "/get_server_info", headers=headers, timeout=10.0)
        if resp.status_code in (401, 403):
            raise _error(resp)
        if resp.status_code == 200:
            return NativeDialect(radixlm=resp.json().get("engine") == "radixlm", model=model)
        described = httpx.get(base + "/openapi.json", headers=headers, timeout=10.0)
    if (described.status_code == 200 and described.headers.get("content-type", "").startswith("application/json")
            and OPENAPI_TITLE in str(described.json().get("info", {}).get("title"))):
        return LlamaCppPythonDialect(model)
    return OpenAIDialect(model)


def connect_http(url: str, model: str, api: str | None = None, api_key: str | None = None,
                 timeout: float | None = None) -> HttpClient:
    """An HttpClient of the server at `url`; `api` (one of `DIALECTS`) skips detection.
    `model` is the model name sent to OpenAI-compatible endpoints."""
    if api is None:
        dialect = detect_dialect(url, api_key, model)
    elif api == "openai":
        dialect = OpenAIDialect(model)
    elif api == "llama-cpp-python":
        dialect = LlamaCppPythonDialect(model)
    elif api in ("radixlm", "sglang"):
        dialect = NativeDialect(radixlm=api == "radixlm", model=model)
    else:
        raise ValueError(f"unknown api {api!r}; use one of {', '.join(DIALECTS)}")
    return HttpClient(url, dialect, api_key, timeout)
