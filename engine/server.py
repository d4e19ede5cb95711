"""The engine as a ZeroMQ service: one ROUTER socket in the engine's single loop.

Each iteration receives every pending message without blocking, runs one scheduled forward pass,
and sends streamed chunks and final results. A malformed message gets an Error reply (or, when it
cannot even be routed, a log line); it never stops the loop or touches other clients' requests.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgspec
import zmq

from radixlm import protocol as P
from radixlm.auth import needs_curve, owner_token_path, serve_with_curve, write_owner_token

from .detokenizer import TextStream
from .engine import Engine, EngineConfig
from .request import GenerationResult, Request, describe
from .validation import check_n

log = logging.getLogger("radixlm.server")
# How long a finished request's last-token KV pass waits for a next call to ride along with.
GHOST_WAIT_MS = 5
# How often clients with requests in flight are sent a Heartbeat (a gone client's requests are aborted).
CLIENT_PROBE_S = 1.0


@dataclass
class _Live:
    """A request in flight: who asked, under which id, and what has been streamed so far."""

    identity: bytes
    rid: str
    req: Request
    stream: bool
    index: int = 0
    text: TextStream = field(default_factory=TextStream)


def check_bind_allowed(endpoint: str, curve_keys: Path | None) -> None:
    """Refuse TCP beyond loopback without CurveZMQ keys (see radixlm.auth)."""
    if needs_curve(endpoint) and curve_keys is None:
        raise PermissionError(f"refusing to serve {endpoint} without authentication: anyone who reaches it "
                              "could use and stop the engine; give a CurveZMQ keys directory (--curve-keys, "
                              "see radixlm.auth.create_keys) or bind a loopback address")


class EngineServer:
    """Serves one Engine on `endpoint` until a Shutdown message, `stop()`, or the parent's death."""

    def __init__(self, engine: Engine, endpoint: str, parent_pid: int | None = None,
                 curve_keys: Path | None = None) -> None:
        """`curve_keys`: a keys directory (radixlm.auth); required for TCP beyond loopback."""
        check_bind_allowed(endpoint, curve_keys)
        self.engine, self.endpoint, self.parent_pid = engine, endpoint, parent_pid
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self._authenticator = serve_with_curve(self.sock, Path(curve_keys)) if curve_keys is not None else None
        # ipc sockets sit in the owner's 0700 directory and curve admits only listed keys: every peer is
        # trusted. On loopback TCP any local user may connect, so Shutdown/Flush need the owner token.
        trusted = endpoint.startswith("ipc://") or curve_keys is not None
        self.owner_token = None if trusted else write_owner_token(endpoint)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Enforced by libzmq while receiving: a peer sending a larger frame is disconnected before
        # the engine reads or decodes any of it (clients check the size before sending).
        self.sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES)
        if endpoint.startswith("ipc://"):
            Path(endpoint[len("ipc://") :]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sock.bind(endpoint)
        self.live: dict[str, _Live] = {}
        self._stopping = False
        self._last_probe = time.monotonic()

    def stop(self) -> None:
        self._stopping = True

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stopping:
                ghosts_only = self.engine.scheduler.only_ghosts_pending()
                timeout = GHOST_WAIT_MS if ghosts_only else (0 if self.engine.has_work() else 50)
                arrived = bool(poller.poll(timeout))
                if arrived:
                    self._drain()
                if self.engine.has_work():
                    # A back-to-back call should not queue behind a lone ghost pass: let it ride along.
                    self._step(allow_ghost_only=not arrived)
                if time.monotonic() - self._last_probe >= CLIENT_PROBE_S:
                    self._probe_clients()
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.info("parent process %d exited; shutting down", self.parent_pid)
                    break
        finally:
            self.sock.close(linger=0)
            if self._authenticator is not None:
                self._authenticator.stop()
            if self.owner_token is not None:
                owner_token_path(self.endpoint).unlink(missing_ok=True)
            if self.endpoint.startswith("ipc://"):
                try:
                    os.unlink(self.endpoint[len("ipc://") :])
                except FileNotFoundError:
                    pass

    def _drain(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)

    def _send(self, identity: bytes, msg: msgspec.Struct) -> bool:
        """Send to one client; False (and its requests aborted) when that client is gone."""
        try:
            self.sock.send_multipart([identity, P.VERSION, P.encode(msg)])
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.info("client %s disconnected; aborting its requests", identity.hex())
            for key, live in list(self.live.items()):
                if live.identity == identity:
                    self.engine.abort(key)
                    del self.live[key]
            return False

    def _probe_clients(self) -> None:
        """Heartbeat every client with requests in flight; `_send` aborts the requests of one that is gone."""
        self._last_probe = time.monotonic()
        for identity in {live.identity for live in self.live.values()}:
            self._send(identity, P.Heartbeat())

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            if frames:
                self._send(frames[0], P.Error(rid="", code="bad_message", message=f"expected 2 frames, got {len(frames) - 1}"))
            return
        identity, version, payload = frames
        rid = P.peek_rid(payload) or ""
        if version != P.VERSION:
            self._send(identity, P.Error(rid=rid, code="bad_version", message=f"protocol {version[:32]!r} is not {P.VERSION!r}"))
            return
        try:
            msg = P.decode_request(payload)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._send(identity, P.Error(rid=rid, code="bad_message", message=str(exc)))
            return
        try:
            self._dispatch(identity, msg)
        except ValueError as exc:
            self._send(identity, P.Error(rid=msg.rid, code="invalid_request", message=str(exc)))
        except Exception as exc:  # a bug handling one message must not stop the engine for everyone
            log.exception("handling %s failed", type(msg).__name__)
            self._send(identity, P.Error(rid=msg.rid, code="engine_error", message=describe(exc)))

    def _dispatch(self, identity: bytes, msg: P.Request) -> None:
        key = f"{identity.hex()}/{msg.rid}"
        if isinstance(msg, P.Generate):
            self._generate(identity, key, msg)
        elif isinstance(msg, P.Abort):
            targets = [k for k, lv in self.live.items() if lv.identity == identity and lv.rid == msg.target]
            if not targets:
                self._send(identity, P.Error(rid=msg.rid, code="unknown_request", message=f"no running request {msg.target!r}"))
                return
            for k in targets:
                del self.live[k]
                self.engine.abort(k)
            self._send(identity, P.Reply(rid=msg.rid, data={"aborted": msg.target}))
        elif isinstance(msg, P.EndTrace):
            self._send(identity, P.Reply(rid=msg.rid, data=self.engine.end_trace(msg.trace_id)))
        elif isinstance(msg, P.Ping):
            self._send(identity, P.Reply(rid=msg.rid, data={"pid": os.getpid(), "time": time.time()}))
        elif isinstance(msg, P.Info):
            self._send(identity, P.Reply(rid=msg.rid, data=self.engine.info()))
        elif isinstance(msg, P.Stats):
            data = self.engine.stats_dict()
            if msg.check_integrity:
                self.engine.check_integrity()
                data["integrity"] = "ok"
            self._send(identity, P.Reply(rid=msg.rid, data=data))
        elif isinstance(msg, (P.Flush, P.Shutdown)) and not self._is_owner(msg.token):
            self._send(identity, P.Error(rid=msg.rid, code="unauthorized",
                                         message=f"{type(msg).__name__} needs the owner token on {self.endpoint}"))
        elif isinstance(msg, P.Flush):
            self.engine.flush_cache()
            self._send(identity, P.Reply(rid=msg.rid, data={"flushed": True}))
        elif isinstance(msg, P.Shutdown):
            self._send(identity, P.Reply(rid=msg.rid, data={"shutdown": True}))
            self.stop()

    def _is_owner(self, token: str | None) -> bool:
        return self.owner_token is None or (token is not None and hmac.compare_digest(token, self.owner_token))

    def _generate(self, identity: bytes, key: str, msg: P.Generate) -> None:
        n = msg.sampling.n
        check_n(n, msg.stream)  # before anything is built per sample
        keys = [f"{key}#{i}" for i in range(n)]
        if any(k in self.live for k in keys):
            self._send(identity, P.Error(rid=msg.rid, code="duplicate_request", message=f"request {msg.rid!r} is already running"))
            return
        ids = self.engine.prompt_ids(text=msg.text, input_ids=msg.input_ids, messages=msg.messages)
        params = msg.sampling
        reqs: list[Request] = []
        try:
            for i, k in enumerate(keys):
                sample_params = msgspec.structs.replace(params, seed=params.seed + i) if params.seed is not None and i else params
                reqs.append(self.engine.add_request(ids, sample_params, rid=k, prefix_only=msg.prefix_only,
                                                    trace_id=msg.trace_id))
        except Exception:
            for req in reqs:  # all samples or none
                self.engine.abort(req.rid)
            raise
        for i, (k, req) in enumerate(zip(keys, reqs)):
            self.live[k] = _Live(identity, msg.rid, req, msg.stream, index=i)

    def _step(self, allow_ghost_only: bool) -> None:
        finished = self.engine.step(allow_ghost_only)  # contains failures; never raises for a request
        for key, live in list(self.live.items()):
            if live.stream and live.req.error is None:
                self._contained(key, live, lambda: self._stream(live))
        for result in finished:
            live = self.live.get(result.rid)
            if live is None:
                continue
            if result.error is not None:
                del self.live[result.rid]
                self._send(live.identity, P.Error(rid=live.rid, code="request_failed", message=result.error))
            elif self._contained(result.rid, live, lambda: self._send(live.identity, self._done(live, result))):
                self.live.pop(result.rid, None)

    def _contained(self, key: str, live: _Live, reply: Callable[[], object]) -> bool:
        """Run `reply` (building and sending one request's chunk or result); if building it raises,
        that request alone is aborted and answered with an Error. False when it failed."""
        try:
            reply()
            return True
        except zmq.ZMQError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. its text cannot be decoded: fail this request only
            log.exception("replying to %s failed", key)
            self.live.pop(key, None)
            self.engine.abort(key)
            self._send(live.identity, P.Error(rid=live.rid, code="request_failed",
                                              message=f"building the reply failed: {describe(exc)}"))
            return False

    def _done(self, live: _Live, r: GenerationResult) -> P.Done:
        texts = self.engine.detokenizer
        return P.Done(rid=live.rid, index=live.index, result=P.Result(
            text=r.text or "", output_ids=r.output_ids, finish_reason=r.finish_reason.value,
            prompt_tokens=r.prompt_tokens, cached_tokens=r.cached_tokens, completion_tokens=r.completion_tokens,
            matched_stop=r.matched_stop,
            output_logprobs=texts.logprob_texts(r.output_logprobs),
            output_top_logprobs=texts.top_logprob_texts(r.output_top_logprobs),
            prompt_logprobs=texts.logprob_texts(r.prompt_logprobs),
            prompt_top_logprobs=texts.top_logprob_texts(r.prompt_top_logprobs),
        ))

    def _stream(self, live: _Live) -> None:
        req, texts = live.req, self.engine.detokenizer
        delta = texts.next_delta(live.text, req)
        if delta is None:
            return
        p, new = req.params, delta.tokens
        logprobs = texts.logprob_texts(req.output_logprobs[new]) if p.wants_logprobs else None
        tops = texts.top_logprob_texts(req.output_top_logprobs[new]) if p.top_logprobs else None
        self._send(live.identity, P.Chunk(rid=live.rid, text=delta.text, token_ids=req.output_ids[new],
                                          logprobs=logprobs, top_logprobs=tops))


def run_server(model: str, endpoint: str, config: EngineConfig, parent_pid: int | None = None,
               curve_keys: Path | None = None) -> None:
    """Load `model`, bind `endpoint` and serve until shut down."""
    logging.basicConfig(level=logging.INFO, format="radixlm engine: %(message)s")
    check_bind_allowed(endpoint, curve_keys)  # before the model load, not after
    start = time.perf_counter()
    engine = Engine.from_model(model, config)
    server = EngineServer(engine, endpoint, parent_pid, curve_keys)
    log.info("serving %s on %s (ready in %.1f s)", model, endpoint, time.perf_counter() - start)
    server.serve_forever()
