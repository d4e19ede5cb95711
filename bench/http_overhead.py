"""Added latency of the HTTP front over ZeroMQ on the same engine.

One `radixlm serve --http-port` engine; a cached text prompt; then 1-token requests alternating
between the ZeroMQ client, the httpx client (`radixlm.connect("http://...")`, SGLang-native /generate)
and a bare OpenAI /v1/completions POST (one persistent httpx connection), in an order that rotates each
round, so that load drifts hit all three alike. Prints the median latency of each and the HTTP overheads
over ZeroMQ, the median of the per-round differences (target: < 2 ms).

    python -m radixlm.bench.http_overhead [--requests 40] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

import radixlm
from radixlm.bench.common import load_average, print_table, save_results, warn_if_busy
from radixlm.bench.http_servers import start_engine, stop

PROMPT = "You are a terse assistant. " * 20 + "Reply with one word: ready?"
TARGET_MS = 2.0


def measure(endpoint: str, url: str, n: int) -> dict[str, list[float]]:
    zmq = radixlm.connect(endpoint, spawn=False, timeout=600)
    over_http = radixlm.connect(url, timeout=600)
    raw = httpx.Client(base_url=url, timeout=600)
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 1, "temperature": 0}

    def openai_post() -> None:
        r = raw.post("/v1/completions", json=body)
        r.raise_for_status()

    paths = {"ZeroMQ client": lambda: zmq.generate(PROMPT, max_new_tokens=1),
             "httpx client, /generate": lambda: over_http.generate(PROMPT, max_new_tokens=1),
             "OpenAI /v1/completions": openai_post}
    for call in paths.values():  # warm: the prompt is cached, connections are open
        call()
    times: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths)
    for i in range(n):  # the order rotates each round, so no path always follows the same one
        for name in order[i % len(order):] + order[:i % len(order)]:
            t = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - t)
    zmq.close()
    over_http.close()
    raw.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None,
                        help="the engine's torch threads (OMP_NUM_THREADS; default: torch's, all cores)")
    args = parser.parse_args()
    busy = warn_if_busy()
    load = load_average()
    engine = start_engine(threads=args.threads)
    try:
        times = measure(engine.endpoint, engine.url, args.requests)
    finally:
        stop(engine)
    load_after = load_average()
    med = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    zmq = times["ZeroMQ client"]
    # Each round sends the three requests back to back: the median of the per-round differences is the
    # overhead, with less of the load's drift in it than a difference of medians.
    added = {name: statistics.median(t - z for t, z in zip(ts, zmq)) * 1000 for name, ts in times.items()}
    rows = [[name, med[name], added[name]] for name in times]
    print_table(["1-token request on a cached prompt", "median ms", "over ZeroMQ ms (median of paired differences)"],
                rows)
    worst = max(added.values())
    print(f"load average {load:.2f} at start, {load_after:.2f} at the end; target HTTP overhead < {TARGET_MS} ms: "
          f"{'met' if worst < TARGET_MS else 'MISSED'}")
    save_results("http_overhead", {"busy_cores_before": busy, "load_average": load, "load_average_after": load_after,
                                   "engine_threads": args.threads,
                                   "ms": {name: [t * 1000 for t in ts] for name, ts in times.items()},
                                   "median_ms": med, "added_ms": added})

if __name__ == "__main__":
    main()
