"""One client's link to the engine: a background I/O thread owns the DEALER socket.

Callers on any thread (or asyncio loop) hand messages to `send` with a callback; the I/O thread
forwards them, routes each reply to the callback registered for its rid, and watches the engine;
when it is found dead every pending callback receives an EngineDiedError.
- An engine on this host (a spawned child, or one on an ipc socket) is watched through its process:
  its exit, or its being stopped (SIGSTOP), is noticed within about 0.3 s. A merely busy engine (a
  long step on a slow CPU) is never mistaken for a dead one.
- Any other engine (tcp, possibly on another host) is watched by a heartbeat over the socket: while
  calls are pending the thread pings it every second, and if nothing at all arrives from it for
  `heartbeat_timeout` seconds (frozen, unreachable, or dead) it is declared dead. A local engine gets
  this check too when `heartbeat_timeout` is given explicitly.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Union

import msgspec
import zmq

from . import protocol as P
from .auth import connect_with_curve

log = logging.getLogger("radixlm.client")
LIVENESS_INTERVAL_S = 0.25
HEARTBEAT_INTERVAL_S = 1.0
# A step of a large model on a CPU can keep the engine from answering for many seconds: be patient.
HEARTBEAT_TIMEOUT_S = 60.0  # the default for engines that cannot be watched as a local process

Callback = Callable[[Union[P.Response, Exception]], None]


class EngineDiedError(RuntimeError):
    """The engine process exited while a call was waiting for it."""


class EngineError(RuntimeError):
    """The engine answered with an Error; `code` names the kind of problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _pid_state(pid: int) -> str | None:
    """Why the local process `pid` cannot answer ("gone", "stopped"), or None while it can."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return None
    # A killed child that nobody reaped yet is a zombie: dead for our purposes. T: stopped (SIGSTOP).
    return {"Z": "gone", "X": "gone", "T": "stopped"}.get(state)


class Connection:
    """DEALER socket + I/O thread + per-rid reply routing + engine liveness watch."""

    def __init__(self, endpoint: str, process: subprocess.Popen | None = None,
                 heartbeat_timeout: float | None = None, curve_keys: str | Path | None = None) -> None:
        """`heartbeat_timeout`: None = HEARTBEAT_TIMEOUT_S unless the engine is a local process (see the
        module docstring). `curve_keys`: a keys directory (radixlm.auth) for an engine that requires CurveZMQ."""
        self.endpoint, self.process, self.heartbeat_timeout = endpoint, process, heartbeat_timeout
        self.engine_pid: int | None = process.pid if process else None
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IDENTITY, uuid.uuid4().bytes)
        if curve_keys is not None:
            connect_with_curve(self._sock, Path(curve_keys))
        self._sock.connect(endpoint)
        self._outbox: queue.SimpleQueue[tuple[bytes, str, Callback | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._pending: dict[str, Callback] = {}
        self._lock = threading.Lock()
        self._dead: Exception | None = None
        self._closing = False
        self._last_heard = self._last_ping = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="radixlm-io", daemon=True)
        self._thread.start()

    def new_rid(self) -> str:
        return uuid.uuid4().hex

    def send(self, msg: msgspec.Struct, callback: Callback | None) -> None:
        """Queue `msg`; replies with its rid go to `callback` until `forget(rid)`."""
        if self._dead is not None:
            raise self._dead
        payload = P.encode(msg)
        if len(payload) > P.MAX_MESSAGE_BYTES:
            raise ValueError(f"message of {len(payload)} bytes exceeds the engine's limit of {P.MAX_MESSAGE_BYTES}")
        self._outbox.put((payload, msg.rid, callback))
        os.write(self._wake_w, b"x")

    def forget(self, rid: str) -> None:
        with self._lock:
            self._pending.pop(rid, None)

    def close(self) -> None:
        self._closing = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_check = time.monotonic() + LIVENESS_INTERVAL_S
        try:
            while not self._closing:
                events = dict(poller.poll(int(LIVENESS_INTERVAL_S * 1000)))
                if self._wake_r in events:
                    os.read(self._wake_r, 65536)
                    self._flush_outbox()
                if self._sock in events:
                    self._receive()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + LIVENESS_INTERVAL_S
                    self._check_engine()
        finally:
            self._sock.close(linger=0)

    def _flush_outbox(self) -> None:
        while True:
            try:
                payload, rid, callback = self._outbox.get_nowait()
            except queue.Empty:
                return
            if callback is not None and self._dead is not None:
                callback(self._dead)
                continue
            if callback is not None:
                with self._lock:
                    if not self._pending:  # the engine owes us nothing until now
                        self._last_heard = time.monotonic()
                    self._pending[rid] = callback
            self._sock.send_multipart([P.VERSION, payload])

    def _receive(self) -> None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                msg = P.decode_response(frames[-1])
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.warning("dropping undecodable reply from the engine: %s", exc)
                continue
            with self._lock:
                callback = self._pending.get(msg.rid)
            if callback is not None:
                callback(msg)
            elif isinstance(msg, P.Error):
                log.warning("engine error for no pending call: %s %s", msg.code, msg.message)

    def _check_engine(self) -> None:
        if self._dead is not None:
            return
        dead, why = False, ""
        pid = self.process.pid if self.process is not None else self.engine_pid
        local_state = _pid_state(pid) if pid is not None else None
        timeout = self.heartbeat_timeout if self.heartbeat_timeout is not None or pid is not None else HEARTBEAT_TIMEOUT_S
        if self.process is not None and self.process.poll() is not None:
            dead, why = True, f"engine process {self.process.pid} exited with code {self.process.returncode}"
        elif local_state is not None:
            dead, why = True, f"engine process {pid} is {local_state}"
        elif self._pending:
            now = time.monotonic()
            silent = now - self._last_heard
            if timeout is not None and silent > timeout:
                dead, why = True, (f"engine at {self.endpoint} did not answer for {silent:.1f} s "
                                   f"(heartbeat_timeout {timeout} s): frozen, unreachable or dead")
            elif now - self._last_ping >= HEARTBEAT_INTERVAL_S:
                self._last_ping = now
                self._sock.send_multipart([P.VERSION, P.encode(P.Ping(rid="heartbeat"))])
        if dead:
            self._dead = EngineDiedError(why)
            with self._lock:
                pending, self._pending = list(self._pending.values()), {}
            for callback in pending:
                callback(self._dead)
