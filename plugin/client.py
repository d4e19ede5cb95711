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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence, Union

from . import protocol as P
from .connection import Connection, EngineDiedError, EngineError
from .endpoint import default_endpoint

Prompt = Union[str, Sequence[int], Sequence[dict]]


@dataclass
class Result:
    """A finished generation."""

    text: str
    output_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass
class StreamChunk:
    """New text and token ids since the previous chunk."""

    text: str
    token_ids: list[int]


def _generate_message(rid: str, prompt: Prompt, stream: bool, max_new_tokens: int, stop_token_ids: Sequence[int],
                      ignore_eos: bool, trace_id: str | None, prefix_only: bool) -> P.Generate:
    fields: dict[str, Any] = {}
    if isinstance(prompt, str):
        fields["text"] = prompt
    elif prompt and all(isinstance(m, dict) for m in prompt):
        fields["messages"] = list(prompt)
    else:
        fields["input_ids"] = [int(t) for t in prompt]
    sampling = P.SamplingOptions(max_new_tokens=max_new_tokens, stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos)
    return P.Generate(rid=rid, sampling=sampling, stream=stream, trace_id=trace_id, prefix_only=prefix_only, **fields)


def _result(msg: P.Done) -> Result:
    u = msg.usage
    return Result(msg.text, msg.output_ids, msg.finish_reason, u.prompt_tokens, u.cached_tokens, u.completion_tokens)


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

    def _call(self, msg: P.Generate | P.Info | P.Stats | P.Flush | P.Ping | P.Shutdown | P.Abort) -> Iterator[P.Response]:
        """Send `msg` and yield its replies; on early exit (or timeout) abort a Generate."""
        box: queue.SimpleQueue = queue.SimpleQueue()
        self.conn.send(msg, box.put)
        finished = False
        try:
            while True:
                try:
                    raw = box.get(timeout=self.timeout)
                except queue.Empty:
                    raise TimeoutError(f"no reply from the engine within {self.timeout} s") from None
                finished = not isinstance(raw, P.Chunk)
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

    def generate(self, prompt: Prompt, *, max_new_tokens: int = 128, stop_token_ids: Sequence[int] = (),
                 ignore_eos: bool = False, trace_id: str | None = None, prefix_only: bool = False) -> Result:
        """Generate from text, token ids, or chat messages; returns when the request finishes."""
        msg = _generate_message(self.conn.new_rid(), prompt, False, max_new_tokens, stop_token_ids, ignore_eos, trace_id, prefix_only)
        return _result(self._one(msg))

    def stream(self, prompt: Prompt, *, max_new_tokens: int = 128, stop_token_ids: Sequence[int] = (),
               ignore_eos: bool = False, trace_id: str | None = None) -> Iterator[StreamChunk]:
        """Yield chunks as tokens are generated; closing the iterator early aborts the request."""
        msg = _generate_message(self.conn.new_rid(), prompt, True, max_new_tokens, stop_token_ids, ignore_eos, trace_id, False)
        for reply in self._call(msg):
            if isinstance(reply, P.Chunk):
                yield StreamChunk(reply.text, reply.token_ids)

    def info(self) -> dict:
        return self._one(P.Info(rid=self.conn.new_rid())).data

    def stats(self, check_integrity: bool = False) -> dict:
        return self._one(P.Stats(rid=self.conn.new_rid(), check_integrity=check_integrity)).data

    def ping(self) -> dict:
        return self._one(P.Ping(rid=self.conn.new_rid())).data

    def flush_cache(self) -> None:
        self._one(P.Flush(rid=self.conn.new_rid()))

    def shutdown(self) -> None:
        """Stop the engine process (for every client attached to it)."""
        self._one(P.Shutdown(rid=self.conn.new_rid()))
        if self.conn.process is not None:
            self.conn.process.wait(timeout=30)
        self.close()

    def close(self) -> None:
        self.conn.close()


class AsyncClient:
    """asyncio face of a Client; cancelling a task or leaving a stream early aborts its request."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def _call(self, msg) -> AsyncIterator[P.Response]:
        loop = asyncio.get_running_loop()
        box: asyncio.Queue = asyncio.Queue()
        self.client.conn.send(msg, lambda reply: loop.call_soon_threadsafe(box.put_nowait, reply))
        finished = False
        try:
            while True:
                raw = await asyncio.wait_for(box.get(), self.client.timeout)
                finished = not isinstance(raw, P.Chunk)
                reply = _raise_if_error(raw)
                yield reply
                if finished:
                    return
        finally:
            self.client._release(msg, finished)

    async def generate(self, prompt: Prompt, *, max_new_tokens: int = 128, stop_token_ids: Sequence[int] = (),
                       ignore_eos: bool = False, trace_id: str | None = None, prefix_only: bool = False) -> Result:
        msg = _generate_message(self.client.conn.new_rid(), prompt, False, max_new_tokens, stop_token_ids, ignore_eos, trace_id, prefix_only)
        calls = self._call(msg)
        try:
            async for reply in calls:
                if isinstance(reply, P.Done):
                    return _result(reply)
        finally:
            await calls.aclose()
        raise EngineError("engine_error", "reply stream ended without a result")

    async def stream(self, prompt: Prompt, *, max_new_tokens: int = 128, stop_token_ids: Sequence[int] = (),
                     ignore_eos: bool = False, trace_id: str | None = None) -> AsyncIterator[StreamChunk]:
        msg = _generate_message(self.client.conn.new_rid(), prompt, True, max_new_tokens, stop_token_ids, ignore_eos, trace_id, False)
        calls = self._call(msg)
        try:
            async for reply in calls:
                if isinstance(reply, P.Chunk):
                    yield StreamChunk(reply.text, reply.token_ids)
        finally:
            await calls.aclose()


def _engine_options_to_flags(options: dict[str, Any]) -> list[str]:
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if name != "radix_cache":
                raise TypeError(f"unknown boolean engine option {name!r}")
            if not value:
                flags.append("--no-radix-cache")
        else:
            flags += [flag, str(value)]
    return flags


def spawn_engine(endpoint: str, model: str, **engine_options: Any) -> subprocess.Popen:
    """Start `radixlm serve` as a child process that exits when this process does."""
    cmd = [sys.executable, "-m", "radixlm.cli", "serve", "--model", model, "--endpoint", endpoint,
           "--parent-pid", str(os.getpid()), *_engine_options_to_flags(engine_options)]
    proc = subprocess.Popen(cmd)
    atexit.register(lambda: proc.poll() is None and proc.terminate())
    return proc


def _ready(conn: Connection, wait: float) -> dict | None:
    probe = Client(conn, timeout=wait)
    try:
        return probe.ping()
    except (TimeoutError, EngineDiedError):
        return None


def connect(endpoint: str | None = None, model: str = "smollm2", *, spawn: bool = True,
            timeout: float | None = None, startup_timeout: float = 600.0, **engine_options: Any) -> Client:
    """Attach to the engine at `endpoint` (default: the user's ipc socket) or, if none answers and
    `spawn` is true, start one on `model` with `engine_options` (EngineConfig fields) and wait for it."""
    endpoint = endpoint or default_endpoint()
    socket_file = Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None
    if socket_file is None or socket_file.exists():
        conn = Connection(endpoint)
        pong = _ready(conn, 1.0)
        if pong is not None:
            conn.engine_pid = pong["pid"]
            return Client(conn, timeout)
        conn.close()
        if not spawn:
            raise EngineDiedError(f"no engine answers at {endpoint}")
    elif not spawn:
        raise EngineDiedError(f"no engine at {endpoint} (socket file missing)")
    print(f"radixlm: starting an engine for {model!r} at {endpoint} (the first start converts the model once)",
          file=sys.stderr)
    proc = spawn_engine(endpoint, model, **engine_options)
    conn = Connection(endpoint, proc)
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
