"""The HTTP front's process: `python -m radixlm.http.server --engine ENDPOINT --port PORT` (what
`radixlm serve --http-port` starts beside the engine). It waits for the engine, serves until the engine
or the parent process is gone, and never touches the engine's loop: it is one more ZeroMQ client."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time

import uvicorn

from ..client import Client, connect
from ..connection import EngineDiedError
from .app import build_app
from .front import Front

log = logging.getLogger("radixlm.http")


def wait_for_engine(endpoint: str, timeout: float, parent_pid: int | None) -> Client:
    """A client of the engine at `endpoint`, once it answers (it may still be loading its model)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(endpoint, spawn=False)
        except EngineDiedError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no engine answered at {endpoint} within {timeout} s") from None
            if parent_pid is not None and os.getppid() != parent_pid:
                raise SystemExit("radixlm http: the engine's process exited before it was ready") from None
            time.sleep(0.2)


def _watch(server: uvicorn.Server, client: Client, parent_pid: int | None) -> None:
    """Stop serving when the parent (`radixlm serve`) or the engine is gone, so a router sees the worker die."""
    while not server.should_exit:
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("the engine's process exited; stopping the HTTP front")
            server.should_exit = True
        try:
            client.ping()
        except EngineDiedError:
            log.warning("the engine is gone; stopping the HTTP front")
            server.should_exit = True
        except TimeoutError:
            log.warning("the engine has not answered a ping for %.0f s", client.timeout)
        time.sleep(0.5)


def serve(endpoint: str, host: str, port: int, model: str, api_key: str | None = None,
          parent_pid: int | None = None, startup_timeout: float = 600.0) -> None:
    """Serve the engine at `endpoint` over HTTP on host:port until it or `parent_pid` exits."""
    client = wait_for_engine(endpoint, startup_timeout, parent_pid)
    control = Client(client.conn, timeout=30.0)  # a busy engine answers between steps
    front = Front(client, model, int(client.info()["max_context"]), api_key)
    config = uvicorn.Config(build_app(front), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=2, lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=_watch, args=(server, control, parent_pid), daemon=True, name="radixlm-http-watch").start()
    print(f"radixlm http: serving {model!r} on http://{host}:{port} (engine {endpoint})", file=sys.stderr, flush=True)
    server.run()
    client.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m radixlm.http.server", description=__doc__)
    p.add_argument("--engine", required=True, help="the engine's ZeroMQ endpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="smollm2", help="the name the model is served under")
    p.add_argument("--api-key-stdin", action="store_true", help="read the bearer token from the first line of stdin")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="radixlm http: %(message)s")
    api_key = sys.stdin.readline().strip() if args.api_key_stdin else None
    if args.api_key_stdin and not api_key:
        raise SystemExit("radixlm http: --api-key-stdin given but stdin held no key")
    serve(args.engine, args.host, args.port, args.model, api_key, args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
