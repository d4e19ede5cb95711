"""`radixlm serve --http-port` as a child process of the tests: the engine on SmolLM2, its ZeroMQ endpoint
and its HTTP front (the benches' `radixlm.bench.http_servers`, with a larger KV pool)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from radixlm.bench.http_servers import Server, start_engine, stop


@contextmanager
def http_engine(*extra: str) -> Iterator[Server]:
    """An engine with `radixlm serve` flags `extra`, healthy, stopped on exit."""
    engine = start_engine("--kv-cache-tokens", "8192", *extra)
    try:
        yield engine
    finally:
        stop(engine)
