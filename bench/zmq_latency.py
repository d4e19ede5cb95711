"""Added latency of the ZeroMQ path over the in-process Engine, on ONE engine, and requests/s with 64 clients.

One Engine serves both paths: an EngineServer runs on it in a thread (bound to an ipc socket), and the
same 1-token request on a cached prompt is sent alternately in-process (add_request + step until it
finishes, as the server's loop does it) and through the socket with a client. The paired differences'
median is the added latency (target < 1 ms); the Ping round trip (no compute) is printed too. Then 64
concurrent clients (threads, one connection each) send 1-token requests on cached prompts: requests/s.

    python -m radixlm.bench.zmq_latency [--requests 40] [--clients 64] [--per-client 4]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import threading
import time


from radixlm.bench.common import print_table, save_results, setup_torch, warn_if_busy

import radixlm
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.protocol import SamplingParams
from radixlm.engine.server import EngineServer

MESSAGES = [{"role": "system", "content": "You are a terse assistant. " * 20},
            {"role": "user", "content": "Reply with one word: ready?"}]


class SharedEngine:
    """An Engine driven both by an EngineServer (in its thread) and in-process: each method call holds
    `lock`, and an in-process request holds it from submission to its finish."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.lock = engine, threading.RLock()

    def __getattr__(self, name: str):
        attr = getattr(self.engine, name)
        if not inspect.ismethod(attr):
            return attr

        def locked(*args, **kwargs):
            with self.lock:
                return attr(*args, **kwargs)

        return locked


def in_process_latency(shared: SharedEngine, ids: list[int]) -> float:
    """Seconds for one 1-token request on `ids`, submitted to the engine directly."""
    engine = shared.engine
    with shared.lock:
        t = time.perf_counter()
        engine.add_request(ids, SamplingParams(max_new_tokens=1))
        # Back-to-back, as the server does it: the previous request's last-token KV pass rides along.
        while not engine.step(allow_ghost_only=False):
            pass
        return time.perf_counter() - t


def client_latency(client: radixlm.Client, ids: list[int]) -> float:
    t = time.perf_counter()
    client.generate(ids, max_new_tokens=1)
    return time.perf_counter() - t


def paired_latencies(shared: SharedEngine, client: radixlm.Client, n: int) -> dict[str, list[float]]:
    """n rounds of the same request in-process, then through the socket, then a Ping."""
    ids = shared.engine.prompt_ids(messages=MESSAGES)
    client.generate(ids, max_new_tokens=1)  # caches the prompt
    in_process_latency(shared, ids)
    out: dict[str, list[float]] = {"in_process": [], "client": [], "ping": []}
    for _ in range(n):
        out["in_process"].append(in_process_latency(shared, ids))
        out["client"].append(client_latency(client, ids))
        t = time.perf_counter()
        client.ping()
        out["ping"].append(time.perf_counter() - t)
    return out


def concurrent_rps(endpoint: str, clients: int, per_client: int) -> float:
    conns = [radixlm.connect(endpoint, spawn=False, timeout=600) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def work(c: radixlm.Client, i: int) -> None:
        barrier.wait()
        for j in range(per_client):
            c.generate(MESSAGES[:1] + [{"role": "user", "content": f"Client {i}, question {j}: ready?"}], max_new_tokens=1)

    threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return clients * per_client / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=4)
    args = parser.parse_args()
    setup_torch()
    busy = warn_if_busy()
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='radixlm-bench-')}/engine.sock"
    shared = SharedEngine(Engine.from_model("smollm2", EngineConfig()))
    server = EngineServer(shared, endpoint)
    thread = threading.Thread(target=server.serve_forever, name="engine-server", daemon=True)
    thread.start()
    client = radixlm.connect(endpoint, spawn=False, timeout=600)
    try:
        lat = paired_latencies(shared, client, args.requests)
        rps = concurrent_rps(endpoint, args.clients, args.per_client)
    finally:
        client.close()
        server.stop()
        thread.join()
    added_ms = statistics.median(c - i for c, i in zip(lat["client"], lat["in_process"])) * 1000
    rows = [
        ["in-process Engine, 1-token request", statistics.median(lat["in_process"]) * 1000],
        ["ZeroMQ client, same request, same engine", statistics.median(lat["client"]) * 1000],
        ["added latency: median of the paired differences (target < 1 ms)", added_ms],
        ["ZeroMQ ping round trip", statistics.median(lat["ping"]) * 1000],
    ]
    print_table(["median latency", "ms"], rows)
    print(f"\n{args.clients} concurrent clients x {args.per_client} one-token requests: {rps:.1f} requests/s")
    print(f"target added latency < 1 ms: {'met' if added_ms < 1 else 'MISSED'}")
    save_results("zmq_latency", {
        "busy_cores_before": busy, "method": "one engine; in-process and socket requests alternated",
        "in_process_ms": [x * 1000 for x in lat["in_process"]], "client_ms": [x * 1000 for x in lat["client"]],
        "ping_ms": [x * 1000 for x in lat["ping"]], "added_ms": added_ms, "concurrent_clients": args.clients,
        "requests_per_s": rps,
    })


if __name__ == "__main__":
    main()
