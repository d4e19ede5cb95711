"""Added latency of the ZeroMQ path over the in-process Engine, and requests/s with 64 clients.

1-token requests on a cached prompt (one extend pass of one token each): median latency in-process
vs through `radixlm serve` + the client, in one run; their difference is the added latency (target
< 1 ms). The Ping round trip (no compute) is printed too. Then 64 concurrent clients (threads, one
connection each) send 1-token requests on cached prompts: requests/s.

    python bench/zmq_latency.py [--requests 40] [--clients 64] [--per-client 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, print_table, save_results, setup_torch, warn_if_busy  # noqa: E402

import radixlm  # noqa: E402
from radixlm.engine.engine import Engine, EngineConfig  # noqa: E402
from radixlm.engine.request import SamplingParams  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are a terse assistant. " * 20},
            {"role": "user", "content": "Reply with one word: ready?"}]


def in_process_latencies(n: int) -> tuple[list[float], list[int]]:
    """Latencies of 1-token requests on a cached prompt (given as token ids), and those ids."""
    engine = Engine.from_model("smollm2", EngineConfig())
    ids = engine.prompt_ids(messages=MESSAGES)
    engine.generate([ids], SamplingParams(max_new_tokens=1))
    out = []
    for _ in range(n):
        t = time.perf_counter()
        engine.add_request(ids, SamplingParams(max_new_tokens=1))
        # Back-to-back, as the server does it: the previous request's last-token KV pass rides along.
        while not engine.step(allow_ghost_only=False):
            pass
        out.append(time.perf_counter() - t)
    return out, ids


def client_latencies(client: radixlm.Client, ids: list[int], n: int) -> tuple[list[float], list[float]]:
    client.generate(ids, max_new_tokens=1)
    gen, ping = [], []
    for _ in range(n):
        t = time.perf_counter()
        client.generate(ids, max_new_tokens=1)
        gen.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.ping()
        ping.append(time.perf_counter() - t)
    return gen, ping


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
    local, ids = in_process_latencies(args.requests)
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='radixlm-bench-')}/engine.sock"
    client = radixlm.connect(endpoint, model="smollm2", timeout=600)
    try:
        remote, ping = client_latencies(client, ids, args.requests)
        rps = concurrent_rps(endpoint, args.clients, args.per_client)
    finally:
        client.shutdown()
    med_local, med_remote = statistics.median(local), statistics.median(remote)
    added_ms = (med_remote - med_local) * 1000
    rows = [
        ["in-process Engine, 1-token request", med_local * 1000],
        ["ZeroMQ client, 1-token request", med_remote * 1000],
        ["added latency (target < 1 ms)", added_ms],
        ["ZeroMQ ping round trip", statistics.median(ping) * 1000],
    ]
    print_table(["median latency", "ms"], rows)
    print(f"\n{args.clients} concurrent clients x {args.per_client} one-token requests: {rps:.1f} requests/s")
    print(f"target added latency < 1 ms: {'met' if added_ms < 1 else 'MISSED'}")
    save_results("zmq_latency", {
        "machine": machine_info(), "busy_cores_before": busy,
        "in_process_ms": [x * 1000 for x in local], "client_ms": [x * 1000 for x in remote],
        "ping_ms": [x * 1000 for x in ping], "added_ms": added_ms, "concurrent_clients": args.clients,
        "requests_per_s": rps,
    })


if __name__ == "__main__":
    main()
