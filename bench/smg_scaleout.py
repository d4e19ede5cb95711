"""Scale-out bench: the shared-prefix workload (radixlm.bench.shared_prefix) over HTTP through SGLang's model
gateway, `smg --policy cache_aware` in front of one radixlm engine vs two.

Workload: R requests (default 64, --quick 16), each the shared ~1,000-token few-shot prefix + a distinct
~50-token question, as text (what a client sends a router; smg's cache-aware policy matches request text),
16 output tokens, greedy, ignore_eos, all sent at once through the router (`radixlm.connect(router)`,
asyncio). Both set-ups get the same CPU threads in all: one engine with --threads, or two engines with half
each (OMP_NUM_THREADS), so the comparison is what routing across engines buys on the same cores. Each
engine is warmed on one workload prompt sent to it directly (not through the router), then its cache is
flushed.

Reported per set-up: wall time, requests/s, output tokens/s, mean and p50/p90 request latency (sent ->
answer), the hit rate the clients saw (sum cached_tokens / sum prompt_tokens), and per engine (its
/get_server_info counters): requests served, prompt and cached tokens, hit rate, busy seconds.

    python -m radixlm.bench.smg_scaleout [--quick] [--requests N] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import httpx

import radixlm
from radixlm.bench.common import load_average, markdown_table, print_table, save_results, warn_if_busy
from radixlm.bench.http_servers import Server, start_engine, start_smg, stop
from radixlm.bench.shared_prefix import OUTPUT_TOKENS, few_shot_prefix, question
from radixlm.engine.model_source import resolve_model
from radixlm.engine.tokenizer import Tokenizer

CHUNK_SIZE = 2048  # one extend pass per ~1,050-token prompt, as radixlm.bench.shared_prefix runs it
COUNTERS = ("requests_finished", "prompt_tokens", "cached_tokens", "busy_seconds")


def workload(n: int) -> list[str]:
    """The shared-prefix workload's prompts as text: the few-shot prefix + question i, for i < n."""
    tok = Tokenizer(resolve_model("smollm2"))
    prefix = tok.decode(few_shot_prefix(tok))
    return [prefix + tok.decode(question(tok, i)) for i in range(n)]


def engine_counters(url: str) -> dict:
    return httpx.get(url + "/get_server_info", timeout=30).json()["stats"]


def warm(engine: Server, prompt: str) -> None:
    """Kernels warmed at the workload's shapes, then the cache emptied (nothing carries into the run)."""
    client = radixlm.connect(engine.url, api="radixlm", timeout=600)
    client.generate(prompt, max_new_tokens=OUTPUT_TOKENS, ignore_eos=True)
    client.flush_cache()
    client.close()


async def send_all(router: str, prompts: list[str]) -> tuple[float, list[tuple[float, object]]]:
    """Every prompt at once through the router; (wall s, [(latency s, Result)]) in prompt order."""
    client = radixlm.connect(router, api="radixlm", timeout=1800)

    async def one(prompt: str) -> tuple[float, object]:
        t = time.perf_counter()
        r = await client.aio.generate(prompt, max_new_tokens=OUTPUT_TOKENS, ignore_eos=True, temperature=0.0)
        return time.perf_counter() - t, r

    start = time.perf_counter()
    done = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - start
    client.close()
    return wall, list(done)


def run_setup(engines: int, per_engine: int, prompts: list[str]) -> dict:
    """`engines` radixlm engines of `per_engine` threads each behind smg; the workload through it."""
    workers: list[Server] = []
    router = None
    try:
        for _ in range(engines):
            workers.append(start_engine("--chunk-size", str(CHUNK_SIZE), threads=per_engine))
        for w in workers:
            warm(w, prompts[0])
        router = start_smg([w.url for w in workers])
        before = [engine_counters(w.url) for w in workers]  # the warm-up's counts, taken off below
        load = load_average()
        wall, done = asyncio.run(send_all(router.url, prompts))
        counters = [{k: c[k] - b[k] for k in COUNTERS} for c, b in zip((engine_counters(w.url) for w in workers),
                                                                         before)]
    finally:
        stop(*([router] if router else []), *workers)
    latencies = sorted(t for t, _ in done)
    results = [r for _, r in done]
    prompt_tokens = sum(r.prompt_tokens for r in results)
    per_worker = [{"requests": c["requests_finished"], "prompt_tokens": c["prompt_tokens"],
                   "cached_tokens": c["cached_tokens"],
                   "hit_rate": c["cached_tokens"] / c["prompt_tokens"] if c["prompt_tokens"] else None,
                   "busy_s": c["busy_seconds"]} for c in counters]
    return {
        "engines": engines, "threads_per_engine": per_engine, "load_average_at_start": load,
        "wall_s": wall, "requests": len(prompts), "requests_per_s": len(prompts) / wall,
        "output_tokens_per_s": sum(r.completion_tokens for r in results) / wall,
        "mean_latency_s": statistics.fmean(latencies),
        "p50_latency_s": latencies[len(latencies) // 2], "p90_latency_s": latencies[int(len(latencies) * 0.9)],
        "prompt_tokens": prompt_tokens, "cached_tokens": sum(r.cached_tokens for r in results),
        "hit_rate": sum(r.cached_tokens for r in results) / prompt_tokens,
        "workers": per_worker, "outputs": [r.text for r in results],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 requests")
    ap.add_argument("--requests", type=int, default=None, help="number of requests (default 64, quick 16)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="CPU threads in all (one engine: all of them; two engines: half each, and one engine on half as the control; default: all cores)")
    args = ap.parse_args()
    n = args.requests or (16 if args.quick else 64)
    busy = warn_if_busy()
    load_before = load_average()
    prompts = workload(n)
    print(f"workload: {n} requests = shared few-shot prefix (~1,000 tokens) + distinct question (~50 tokens) as "
          f"text, {OUTPUT_TOKENS} output tokens (greedy, ignore_eos), all at once through smg --policy cache_aware; "
          f"{args.threads} threads in all", flush=True)
    half = max(1, args.threads // 2)
    setups = {"smg + 1 engine": (1, args.threads), "smg + 2 engines": (2, half)}
    if half != args.threads:  # the control: one engine on the threads each of the two has
        setups[f"smg + 1 engine, {half} thread{'s' if half > 1 else ''}"] = (1, half)
    res = {}
    for name, (engines, per_engine) in setups.items():
        print(f"  running {name} ...", flush=True)
        res[name] = run_setup(engines, per_engine, prompts)
        print(f"    {res[name]['wall_s']:.1f} s, {res[name]['requests_per_s']:.2f} req/s", flush=True)
    load_after = load_average()
    one, two = res["smg + 1 engine"], res["smg + 2 engines"]
    same = {name: sum(a == b for a, b in zip(one["outputs"], r["outputs"])) for name, r in res.items() if r is not one}

    headers = ["set-up", "threads/engine", "req/s", "output tok/s", "mean latency s", "p90 latency s",
               "hit rate", "per engine: requests, hit rate, busy s"]
    rows = [[name, r["threads_per_engine"], r["requests_per_s"], r["output_tokens_per_s"], r["mean_latency_s"],
             r["p90_latency_s"], f"{r['hit_rate']:.1%}",
             "; ".join(f"{w['requests']}, {w['hit_rate']:.1%}, {w['busy_s']:.1f}" if w["requests"] else "0"
                       for w in r["workers"])] for name, r in res.items()]
    print()
    print_table(headers, rows)
    print(f"\n2 engines / 1 engine requests/s: {two['requests_per_s'] / one['requests_per_s']:.2f}x; greedy outputs "
          f"identical to smg + 1 engine's: {', '.join(f'{k} {v}/{n}' for k, v in same.items())}; load average "
          f"{load_before:.2f} before, {load_after:.2f} after")
    for r in res.values():
        r.pop("outputs")
    save_results("smg_scaleout_quick" if args.quick else "smg_scaleout", {
        "config": {"requests": n, "output_tokens": OUTPUT_TOKENS, "threads": args.threads, "chunk_size": CHUNK_SIZE,
                   "policy": "cache_aware (smg defaults)", "quick": args.quick},
        "busy_cores_before": busy, "load_average_before": load_before, "load_average_after": load_after,
        "setups": res, "two_over_one_requests_per_s": two["requests_per_s"] / one["requests_per_s"],
        "outputs_identical_to_one_engine": same,
    }, markdown_table(headers, rows))


if __name__ == "__main__":
    main()
