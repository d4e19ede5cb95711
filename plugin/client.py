"""The radixlm client: attach to a running engine or spawn one, then generate, stream, and manage it
from threads (`Client`) or asyncio tasks (`AsyncClient`). No torch is imported here."""

from __future__ import annotations

import asyncio
import atexit
import os
import queue
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Protocol, Sequence, Union

import msgspec

from . import protocol as P
from .auth import read_owner_token
from .config_flags import options_to_flags
from .connection import Connection, EngineDiedError, EngineError
from .endpoint import default_endpoint
from .protocol import Result

Prompt = Union[str, Sequence[int], Sequence[dict]]


@dataclass
class StreamChunk:
    """New text and token ids since the previous chunk (and their logprobs when `logprobs=True`)."""

    text: str
    token_ids: list[int]
    logprobs: list | None = None
    top_logprobs: list | None = None


CONSTRAINT_FIELDS = frozenset(P.Constraint.__struct_fields__)
SAMPLING_FIELDS = frozenset(P.SamplingParams.__struct_fields__) - {"constraint"}


def sampling_params(options: dict[str, Any]) -> P.SamplingParams:
    """The SamplingParams of keyword options: its fields under their own names (a single `stop` string
    is a list of one) and one constraint (regex, json_schema as an object or its JSON text, choices,
    lark) by name."""
    unknown = set(options) - SAMPLING_FIELDS - CONSTRAINT_FIELDS
    if unknown:
        raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
    fields = {k: v for k, v in options.items() if k in SAMPLING_FIELDS}
    for name in ("stop", "stop_token_ids"):
        if name in fields:
            value = fields[name]
            fields[name] = [value] if isinstance(value, str) else list(value)
    constraint = {k: v for k, v in options.items() if k in CONSTRAINT_FIELDS and v is not None}
    if "json_schema" in constraint:
        constraint["json_schema"] = P.json_schema_of(constraint["json_schema"])
    if "choices" in constraint:
        constraint["choices"] = list(constraint["choices"])
    return P.SamplingParams(**fields, constraint=P.Constraint(**constraint) if constraint else None)


def _generate_message(rid: str, prompt: Prompt, stream: bool, options: dict[str, Any]) -> P.Generate:
    """Build a Generate message. `options`: SamplingParams fields (temperature, top_p, max_new_tokens,
    stop, seed, n, logprobs, top_logprobs, logprob_start_len, ...), one constraint (see
    `sampling_params`), trace_id and prefix_only."""
    fields: dict[str, Any] = {}
    if isinstance(prompt, str):
        fields["text"] = prompt
    elif prompt and all(isinstance(m, dict) for m in prompt):
        fields["messages"] = list(prompt)
    else:
        fields["input_ids"] = [int(t) for t in prompt]
    options = dict(options)
    trace_id, prefix_only = options.pop("trace_id", None), options.pop("prefix_only", False)
    return P.Generate(rid=rid, stream=stream, sampling=sampling_params(options), trace_id=trace_id,
                      prefix_only=prefix_only, **fields)


def _expected_results(msg: msgspec.Struct) -> int:
    return msg.sampling.n if isinstance(msg, P.Generate) else 1


def _collect(msg: P.Generate, done: list[P.Done]) -> Result | list[Result]:
    results = [d.result for d in sorted(done, key=lambda d: d.index)]
    return results if msg.sampling.n > 1 else results[0]


def _stream_item(reply: P.Response, include_result: bool) -> StreamChunk | Result | None:
    if isinstance(reply, P.Chunk):
        return StreamChunk(reply.text, reply.token_ids, reply.logprobs, reply.top_logprobs)
    if include_result and isinstance(reply, P.Done):
        return reply.result
    return None


def _raise_if_error(msg: P.Response | Exception) -> P.Response:
    if isinstance(msg, Exception):
        raise msg
    if isinstance(msg, P.Error):
        raise EngineError(msg.code, msg.message)
    return msg


class Client:
    """Thread-safe synchronous client. `timeout` (seconds, None = wait forever) bounds each call."""

    def __init__(self, connection: Connection, timeout: float | None = None) -> None:
        self.conn, self.timeout = connection, timeout
        self.aio = AsyncClient(self)
        self.open_traces: set[str] = set()  # trace ids this client sent calls for and did not end
        hold_traces(self)

    @property
    def endpoint(self) -> str:
        """The engine's ZeroMQ endpoint (what `connect` takes to reach the same engine again)."""
        return self.conn.endpoint

    def _note_trace(self, msg: msgspec.Struct) -> None:
        if isinstance(msg, P.Generate) and msg.trace_id is not None:
            self.open_traces.add(msg.trace_id)

    def _call(self, msg: P.Generate | P.Info | P.Stats | P.Flush | P.Ping | P.Shutdown | P.Abort) -> Iterator[P.Response]:
        """Send `msg` and yield its replies until its last one (n results for an n-sample Generate);
        on early exit (or timeout) abort a Generate."""
        box: queue.SimpleQueue = queue.SimpleQueue()
        self._note_trace(msg)
        self.conn.send(msg, box.put)
        finished = False
        results_left = _expected_results(msg)
        try:
            while True:
                try:
                    raw = box.get(timeout=self.timeout)
                except queue.Empty:
                    raise TimeoutError(f"no reply from the engine within {self.timeout} s") from None
                results_left -= not isinstance(raw, P.Chunk)
                finished = results_left == 0 or not isinstance(raw, (P.Chunk, P.Done))
                reply = _raise_if_error(raw)
                yield reply
                if finished:
                    return
        finally:
            self._release(msg, finished)

    def _release(self, msg: P.Generate | P.Info | P.Stats | P.Flush | P.Ping | P.Shutdown | P.Abort, finished: bool) -> None:
        """Stop routing replies for `msg`; abort it in the engine if it is a generation left unfinished."""
        self.conn.forget(msg.rid)
        if not finished and isinstance(msg, P.Generate):
            self._abort(msg.rid)

    def _abort(self, rid: str) -> None:
        try:
            self.conn.send(P.Abort(rid=self.conn.new_rid(), target=rid), None)
        except EngineDiedError:
            pass

    def _one(self, msg) -> P.Response:
        for reply in self._call(msg):
            if not isinstance(reply, P.Chunk):
                return reply
        raise EngineError("engine_error", "reply stream ended without a result")

    def generate(self, prompt: Prompt, **options: Any) -> Result | list[Result]:
        """Generate from text, token ids, or chat messages; returns when the request finishes (a list
        of n results for n > 1). Options: see `_generate_message`."""
        msg = _generate_message(self.conn.new_rid(), prompt, False, options)
        return _collect(msg, [r for r in self._call(msg) if isinstance(r, P.Done)])

    def stream(self, prompt: Prompt, include_result: bool = False, **options: Any) -> Iterator[StreamChunk | Result]:
        """Yield chunks as tokens are generated; closing the iterator early aborts the request.
        `include_result`: also yield each finished `Result` (usage, finish reason, logprobs) after
        its chunks, as OpenAI's `stream_options.include_usage` does."""
        msg = _generate_message(self.conn.new_rid(), prompt, True, options)
        for reply in self._call(msg):
            item = _stream_item(reply, include_result)
            if item is not None:
                yield item

    def end_trace(self, trace_id: str) -> dict:
        """Tell the engine the agent trace `trace_id` is over, so it releases the KV it kept for it
        (adapters call this when the outermost DSPy module call / LangChain root run returns)."""
        self.open_traces.discard(trace_id)
        return self._one(P.EndTrace(rid=self.conn.new_rid(), trace_id=trace_id)).data

    def end_trace_nowait(self, trace_id: str) -> None:
        """`end_trace` without waiting for the reply: the message queues behind the trace's last call."""
        self.open_traces.discard(trace_id)
        try:
            self.conn.send(P.EndTrace(rid=self.conn.new_rid(), trace_id=trace_id), None)
        except EngineDiedError:
            pass  # its engine is gone, and the trace's KV with it

    def info(self) -> dict:
        return self._one(P.Info(rid=self.conn.new_rid())).data

    def stats(self, check_integrity: bool = False) -> dict:
        return self._one(P.Stats(rid=self.conn.new_rid(), check_integrity=check_integrity)).data

    def ping(self) -> dict:
        return self._one(P.Ping(rid=self.conn.new_rid())).data

    def flush_cache(self) -> None:
        self._one(P.Flush(rid=self.conn.new_rid(), token=read_owner_token(self.conn.endpoint)))

    def shutdown(self) -> None:
        """Stop the engine process (for every client attached to it). On loopback TCP only its owner
        (the user who started it) may; see radixlm.auth."""
        self._one(P.Shutdown(rid=self.conn.new_rid(), token=read_owner_token(self.conn.endpoint)))
        if self.conn.process is not None:
            self.conn.process.wait(timeout=30)
        self.close()

    def close(self) -> None:
        release_traces(self)
        self.conn.close()


class TraceHolder(Protocol):
    """A client of an engine that keeps KV per agent trace (radixlm over ZeroMQ or HTTP)."""

    open_traces: set[str]  # trace ids it sent calls for and did not end

    def end_trace_nowait(self, trace_id: str) -> None:
        """Tell its engine that `trace_id` is over, not waiting for the reply."""


_trace_holders: weakref.WeakSet[TraceHolder] = weakref.WeakSet()


def hold_traces(client: TraceHolder) -> None:
    """Let `end_trace_everywhere` reach `client` (until its `close`)."""
    _trace_holders.add(client)


def release_traces(client: TraceHolder) -> None:
    """`end_trace_everywhere` no longer reaches `client` (its `close` calls this)."""
    _trace_holders.discard(client)


def end_trace_everywhere(trace_id: str) -> None:
    """End `trace_id` on every engine this process sent calls of that trace to (the adapters call this
    when an agent's root run returns)."""
    for client in list(_trace_holders):
        if trace_id in client.open_traces:
            client.end_trace_nowait(trace_id)


class AsyncClient:
    """asyncio face of a Client; cancelling a task or leaving a stream early aborts its request."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def _call(self, msg) -> AsyncIterator[P.Response]:
        loop = asyncio.get_running_loop()
        box: asyncio.Queue = asyncio.Queue()
        self.client._note_trace(msg)
        self.client.conn.send(msg, lambda reply: loop.call_soon_threadsafe(box.put_nowait, reply))
        finished = False
        results_left = _expected_results(msg)
        try:
            while True:
                raw = await asyncio.wait_for(box.get(), self.client.timeout)
                results_left -= not isinstance(raw, P.Chunk)
                finished = results_left == 0 or not isinstance(raw, (P.Chunk, P.Done))
                reply = _raise_if_error(raw)
                yield reply
                if finished:
                    return
        finally:
            self.client._release(msg, finished)

    async def generate(self, prompt: Prompt, **options: Any) -> Result | list[Result]:
        msg = _generate_message(self.client.conn.new_rid(), prompt, False, options)
        calls = self._call(msg)
        try:
            return _collect(msg, [r async for r in calls if isinstance(r, P.Done)])
        finally:
            await calls.aclose()

    async def end_trace(self, trace_id: str) -> dict:
        """See `Client.end_trace`."""
        self.client.open_traces.discard(trace_id)
        calls = self._call(P.EndTrace(rid=self.client.conn.new_rid(), trace_id=trace_id))
        try:
            return (await calls.__anext__()).data
        finally:
            await calls.aclose()

    async def stream(self, prompt: Prompt, include_result: bool = False,
                     **options: Any) -> AsyncIterator[StreamChunk | Result]:
        msg = _generate_message(self.client.conn.new_rid(), prompt, True, options)
        calls = self._call(msg)
        try:
            async for reply in calls:
                item = _stream_item(reply, include_result)
                if item is not None:
                    yield item
        finally:
            await calls.aclose()


def spawn_engine(endpoint: str, model: str, curve_keys: str | Path | None = None,
                 **engine_options: Any) -> subprocess.Popen:
    """Start `radixlm serve` as a child process that exits when this process does."""
    cmd = [sys.executable, "-m", "radixlm.cli", "serve", "--model", model, "--endpoint", endpoint,
           "--parent-pid", str(os.getpid()), *options_to_flags(engine_options)]
    if curve_keys is not None:
        cmd += ["--curve-keys", str(curve_keys)]
    proc = subprocess.Popen(cmd)
    atexit.register(lambda: proc.poll() is None and proc.terminate())
    return proc


# How long `connect` waits for an existing engine's answer before it concludes that none is there.
ATTACH_WAIT_S = 10.0


def _ready(conn: Connection, wait: float) -> dict | None:
    probe = Client(conn, timeout=wait)
    try:
        return probe.ping()
    except (TimeoutError, EngineDiedError):
        return None


def connect(endpoint: str | None = None, model: str = "smollm2", *, spawn: bool = True,
            timeout: float | None = None, startup_timeout: float = 600.0,
            heartbeat_timeout: float | None = None, curve_keys: str | Path | None = None,
            api: str | None = None, api_key: str | None = None, **engine_options: Any) -> Client:
    """Attach to the engine at `endpoint` (default: the user's ipc socket) or, if none answers and
    `spawn` is true, start one on `model` with `engine_options` (EngineConfig fields, the same names
    as the `radixlm serve` flags) and wait for it. A call fails with EngineDiedError when the engine
    exits or is stopped (a local engine), or sends nothing for `heartbeat_timeout` seconds (default
    60 for an engine that is not a local process; see radixlm.connection). `curve_keys`: a keys
    directory (radixlm.auth) for an engine served beyond loopback.

    An `http://` or `https://` endpoint gives an `radixlm.http.client.HttpClient` with the same API, of a
    radixlm HTTP front, an SGLang server or an OpenAI-compatible server (`api`: "radixlm", "sglang",
    "openai" or "llama-cpp-python"; detected when not given); `model` is the name sent to OpenAI endpoints, `api_key` the bearer
    token."""
    if endpoint is not None and endpoint.startswith(("http://", "https://")):
        if engine_options:
            raise TypeError(f"engine options ({', '.join(engine_options)}) cannot be sent to an HTTP server")
        from .http.client import connect_http

        return connect_http(endpoint, model, api=api, api_key=api_key, timeout=timeout)
    if api is not None or api_key is not None:
        raise TypeError("api and api_key apply to http:// endpoints only")
    endpoint = endpoint or default_endpoint()
    socket_file = Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None
    if socket_file is None or socket_file.exists():
        conn = Connection(endpoint, heartbeat_timeout=heartbeat_timeout, curve_keys=curve_keys)
        # A busy engine answers between two forward passes, which can take seconds on a loaded CPU:
        # give it time rather than start a second engine on the same socket.
        pong = _ready(conn, ATTACH_WAIT_S)
        if pong is not None:
            if socket_file is not None:  # same host: its pid is ours to watch too
                conn.engine_pid = pong["pid"]
            return Client(conn, timeout)
        conn.close()
        if not spawn:
            raise EngineDiedError(f"no engine answers at {endpoint}")
    elif not spawn:
        raise EngineDiedError(f"no engine at {endpoint} (socket file missing)")
    print(f"radixlm: starting an engine for {model!r} at {endpoint} (the first start converts the model once)",
          file=sys.stderr)
    proc = spawn_engine(endpoint, model, curve_keys, **engine_options)
    conn = Connection(endpoint, proc, heartbeat_timeout, curve_keys)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            conn.close()
            raise EngineDiedError(f"engine exited with code {proc.returncode} while starting; see its output above")
        if _ready(conn, 0.5) is not None:
            return Client(conn, timeout)
    proc.terminate()
    conn.close()
    raise TimeoutError(f"engine did not become ready within {startup_timeout} s")
