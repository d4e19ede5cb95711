"""RadixAttention bench: many requests sharing one long few-shot prefix (SmolLM2-135M, CPU, float32).

Workload: R requests (default 64), each = the same ~1,000-token synthetic few-shot prefix
("Question: ... Answer: ..." pairs built from word lists, fixed seed) + a distinct ~50-token
question, 16 output tokens, greedy, ignore_eos. All requests are submitted at once (add_request for
each, then Engine.run()); every radixlm system gets a fresh engine, so none reuses another's cache.

Systems: radixlm policy lpm, radixlm fcfs, radixlm with the radix cache off, HF transformers
serving one request at a time (greedy generate, min_new_tokens = 16), and llama-cpp-python on the
same model's GGUF serving all requests one at a time in the same run (its own child process, see
isolation.py; it reuses the previous request's KV for the common prefix; greedy, 16 tokens, EOS not
stopping it). HF takes seconds per request here, so it runs only the first --hf-requests requests
and its rates are extrapolated from those.

Reported per system: requests/s, output tokens/s, mean time to first token (arrival -> first token;
for HF estimated for the whole queue as i x mean service time + measured service TTFT), measured
prefix hit rate (sum cached_tokens / sum prompt_tokens) against the optimal hit rate of the workload
(computed exactly from the token ids through a trie; one token of every prompt is always computed).

Usage: python -m radixlm.bench.shared_prefix [--quick] [--requests N] [--hf-requests N] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time

import torch

from radixlm.bench.common import (
    FirstTokenTimer, load_hf_model, markdown_table, optimal_hit_rate, print_table, save_results, setup_torch,
    warn_if_busy,
)

from radixlm.bench.isolation import Failure, run_isolated
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.loader import load_model
from radixlm.protocol import SamplingParams

SEED = 1234
PREFIX_TOKENS = 1000
QUESTION_TOKENS = 50
OUTPUT_TOKENS = 16
TARGETS = {"vs_hf": 12.0, "vs_cache_off": 5.0, "hit_vs_optimal": 0.95}

ADJECTIVES = ("red", "quiet", "ancient", "rapid", "golden", "hollow", "bright", "frozen", "gentle", "heavy",
              "narrow", "silver", "wild", "hidden", "tiny", "vast", "bitter", "calm", "curious", "distant")
NOUNS = ("river", "castle", "engine", "forest", "lantern", "mountain", "harbor", "library", "garden", "bridge",
         "comet", "village", "tower", "meadow", "island", "canyon", "market", "orchard", "glacier", "desert")
ATTRIBUTES = ("color", "age", "height", "name", "weight", "origin", "length", "owner", "purpose", "shape")
VALUES = ("blue", "three hundred years", "forty meters", "Elara", "nine tons", "the north", "two miles",
          "a baker", "storing grain", "round", "green", "seven days", "Borin", "the coast", "a ferryman")
VERBS = ("crosses", "guards", "feeds", "remembers", "follows", "hides", "lights", "shelters", "divides", "joins")


def few_shot_prefix(tok) -> list[int]:
    """Deterministic few-shot text, tokenized and trimmed to PREFIX_TOKENS tokens."""
    rng = random.Random(SEED)
    text = "Answer each question with one short sentence, in the style of the examples.\n\n"
    ids: list[int] = []
    while len(ids) < PREFIX_TOKENS:
        for _ in range(8):
            adj, noun, attr, val = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(ATTRIBUTES), rng.choice(VALUES)
            text += f"Question: What is the {attr} of the {adj} {noun}?\nAnswer: The {attr} of the {adj} {noun} is {val}.\n\n"
        ids = tok.encode(text)
    return ids[:PREFIX_TOKENS]


def question(tok, index: int) -> list[int]:
    """A distinct question of about QUESTION_TOKENS tokens (starts a new line after the prefix)."""
    rng = random.Random(SEED * 1000 + index)
    words = [f"\n\nQuestion: In story {index}, the"]
    ids = tok.encode(" ".join(words) + "? Answer:")
    while len(ids) < QUESTION_TOKENS:
        words.append(f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} that {rng.choice(VERBS)} the")
        ids = tok.encode(" ".join(words) + f" {rng.choice(NOUNS)}: what is its {rng.choice(ATTRIBUTES)}?\nAnswer:")
    return ids


# ---------------------------------------------------------------- systems


def run_engine(loaded, config: EngineConfig, prompts: list[list[int]]) -> dict:
    """Submit every prompt at once to a fresh engine and run to completion."""
    engine = Engine(loaded.model, config, loaded.eos_token_ids, loaded.tokenizer)
    params = SamplingParams(max_new_tokens=OUTPUT_TOKENS, ignore_eos=True)
    start = time.perf_counter()
    reqs = [engine.add_request(p, params) for p in prompts]
    by_rid = {r.rid: r for r in engine.run()}
    wall = time.perf_counter() - start
    engine.check_integrity()
    results = [by_rid[r.rid] for r in reqs]
    ttft = [r.first_token_time - r.arrival for r in reqs if r.first_token_time is not None]
    prompt_tokens = sum(r.prompt_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)
    out = {
        "wall_s": wall,
        "requests": len(prompts),
        "requests_per_s": len(prompts) / wall,
        "output_tokens_per_s": sum(r.completion_tokens for r in results) / wall,
        "mean_ttft_s": statistics.fmean(ttft) if ttft else None,
        "hit_rate": cached / prompt_tokens,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached,
        "stats": engine.stats_dict(),
        "outputs": [r.output_ids for r in results],
    }
    del engine
    gc.collect()
    return out


def run_hf(model, prompts: list[list[int]], total_requests: int, eos: int) -> dict:
    """Serve `prompts` one at a time; rates per request extrapolate to the whole queue."""
    from transformers import LogitsProcessorList

    service, ttft, outputs = [], [], []
    with torch.inference_mode():
        inp = torch.tensor([prompts[0]])  # warm-up at the workload's shape, not timed
        model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=2, do_sample=False, pad_token_id=eos)
        for ids in prompts:
            inp = torch.tensor([ids])
            rec = FirstTokenTimer()
            t0 = time.perf_counter()
            out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=OUTPUT_TOKENS,
                                 min_new_tokens=OUTPUT_TOKENS, do_sample=False, pad_token_id=eos,
                                 logits_processor=LogitsProcessorList([rec]))
            service.append(time.perf_counter() - t0)
            ttft.append(rec.time - t0)
            outputs.append(out[0, len(ids):].tolist())
            print(f"    HF request {len(service)}/{len(prompts)}: {service[-1]:.2f} s", flush=True)
    per_req = statistics.fmean(service)
    # All requests arrive at once and are served in order: request i waits i x service time.
    queued_ttft = (total_requests - 1) / 2 * per_req + statistics.fmean(ttft)
    return {
        "wall_s": sum(service),
        "requests": len(prompts),
        "requests_per_s": len(prompts) / sum(service),
        "output_tokens_per_s": OUTPUT_TOKENS * len(prompts) / sum(service),
        "mean_ttft_s": queued_ttft,
        "service_ttft_s": statistics.fmean(ttft),
        "service_s": service,
        "hit_rate": 0.0,
        "outputs": outputs,
    }


def run_llamacpp(prompts: list[list[int]], threads: int) -> dict:
    """llama-cpp-python serving every prompt one at a time in its own process; {"error": ...} if it failed."""
    env = {"OMP_NUM_THREADS": str(threads)}
    items = list(run_isolated("radixlm.bench.llamacpp_backend:serve_sequential",
                              {"prompts": prompts, "max_new_tokens": OUTPUT_TOKENS, "threads": threads}, 1800, env))
    if items and isinstance(items[-1], Failure):
        return {"error": items[-1].reason}
    service = [i["service_s"] for i in items]
    queued_ttft = statistics.fmean(sum(service[:k]) + items[k]["first_token_s"] for k in range(len(items)))
    prompt_tokens = sum(len(p) for p in prompts)
    cached = sum(i["cached_tokens"] for i in items)
    return {
        "wall_s": sum(service),
        "requests": len(prompts),
        "requests_per_s": len(prompts) / sum(service),
        "output_tokens_per_s": OUTPUT_TOKENS * len(prompts) / sum(service),
        "mean_ttft_s": queued_ttft,  # request k waits for the k before it (all arrive at once)
        "service_ttft_s": statistics.fmean(i["first_token_s"] for i in items),
        "hit_rate": cached / prompt_tokens,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached,
        "outputs": [i["output_ids"] for i in items],
    }


# ---------------------------------------------------------------- main


def pct(x: float) -> str:
    return f"{x:.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 requests, 2 for HF")
    ap.add_argument("--requests", type=int, default=None, help="number of requests (default 64, quick 16)")
    ap.add_argument("--hf-requests", type=int, default=None, help="requests HF serves (default 6, quick 2)")
    ap.add_argument("--chunk-size", type=int, default=2048,
                    help="engine chunk_size (default 2048: with 1024 the ~1,050-token prompts need a chunked "
                         "prefill pass, which crashes on an engine bug: engine.py builds logit_rows with "
                         "torch.tensor([]) -> float32 when no request finishes its prefill in the pass)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of every system (default: all cores)")
    args = ap.parse_args()
    n = args.requests or (16 if args.quick else 64)
    n_hf = min(n, args.hf_requests or (2 if args.quick else 6))
    setup_torch(args.threads)
    print(f"{args.threads} threads for every system")
    load_before = warn_if_busy()

    loaded = load_model("smollm2")
    tok = loaded.tokenizer
    prefix = few_shot_prefix(tok)
    questions = [question(tok, i) for i in range(n)]
    prompts = [prefix + q for q in questions]
    optimal, cacheable, total = optimal_hit_rate([(p, []) for p in prompts])
    eos = min(loaded.eos_token_ids) if loaded.eos_token_ids else 0
    print(f"workload: {n} requests = {len(prefix)}-token shared few-shot prefix + distinct question "
          f"({min(map(len, questions))}-{max(map(len, questions))} tokens), {OUTPUT_TOKENS} output tokens "
          f"(ignore_eos, greedy); {total} prompt tokens, optimal hit rate {optimal:.2%}; "
          f"engine chunk_size {args.chunk_size}, kv_cache_tokens {EngineConfig().kv_cache_tokens}")

    cs = args.chunk_size
    # Warm up kernels at the workload's shapes on a throwaway engine (not timed; no cache carries over).
    run_engine(loaded, EngineConfig(chunk_size=cs), prompts[:2])

    systems = {
        "radixlm lpm": EngineConfig(policy="lpm", chunk_size=cs),
        "radixlm fcfs": EngineConfig(policy="fcfs", chunk_size=cs),
        "radixlm cache off": EngineConfig(policy="lpm", radix_cache=False, chunk_size=cs),
    }
    res: dict[str, dict] = {}
    for name, cfg in systems.items():
        print(f"  running {name} ...", flush=True)
        res[name] = run_engine(loaded, cfg, prompts)
        print(f"    {res[name]['wall_s']:.1f} s, {res[name]['requests_per_s']:.2f} req/s", flush=True)

    bf16 = load_model("smollm2", dtype=torch.bfloat16)
    run_engine(bf16, EngineConfig(chunk_size=cs, dtype="bfloat16"), prompts[:2])
    print("  running radixlm lpm bf16 ...", flush=True)
    res["radixlm lpm bf16"] = run_engine(bf16, EngineConfig(policy="lpm", chunk_size=cs, dtype="bfloat16"), prompts)
    print(f"    {res['radixlm lpm bf16']['wall_s']:.1f} s, {res['radixlm lpm bf16']['requests_per_s']:.2f} req/s", flush=True)
    del bf16

    hf_name = f"HF transformers (sequential, first {n_hf} of {n})"
    print(f"  running {hf_name} ...", flush=True)
    hf = load_hf_model(loaded.folder)
    res[hf_name] = run_hf(hf, prompts[:n_hf], n, eos)
    del hf

    llama_name = "llama-cpp-python (sequential, all requests)"
    print(f"  running {llama_name} ...", flush=True)
    llama = run_llamacpp(prompts, args.threads)
    if "error" in llama:
        print(f"    FAILED: {llama['error']}", flush=True)
    else:
        res[llama_name] = llama
        print(f"    {llama['wall_s']:.1f} s, {llama['requests_per_s']:.2f} req/s", flush=True)

    lpm, off, hfr = res["radixlm lpm"], res["radixlm cache off"], res[hf_name]
    same_off = lpm["outputs"] == off["outputs"]
    same_fcfs = lpm["outputs"] == res["radixlm fcfs"]["outputs"]
    hf_agree = sum(a == b for a, b in zip(hfr["outputs"], lpm["outputs"][:n_hf]))
    llama_agree = sum(a == b for a, b in zip(llama["outputs"], lpm["outputs"])) if "outputs" in llama else None
    ratios = {
        "vs_hf": lpm["requests_per_s"] / hfr["requests_per_s"],
        "vs_llamacpp": lpm["requests_per_s"] / llama["requests_per_s"] if "requests_per_s" in llama else None,
        "vs_cache_off": lpm["requests_per_s"] / off["requests_per_s"],
        "hit_vs_optimal": lpm["hit_rate"] / optimal,
    }
    met = {k: ratios[k] >= TARGETS[k] for k in TARGETS}
    llama_row = f"llama-cpp-python: {llama_agree}/{n} identical" if llama_agree is not None else \
        f"llama-cpp-python FAILED: {llama['error']}"

    headers = ["system", "req/s", "output tok/s", "mean TTFT s", "hit rate", "hit / optimal", "wall s",
               "lpm req/s ratio"]
    rows = []
    for name, r in res.items():
        ttft = r["mean_ttft_s"]
        rows.append([name, r["requests_per_s"], r["output_tokens_per_s"],
                     f"{ttft:.2f} (est.)" if name in (hf_name, llama_name) else ttft, pct(r["hit_rate"]), pct(r["hit_rate"] / optimal),
                     r["wall_s"], lpm["requests_per_s"] / r["requests_per_s"]])
    print()
    print_table(headers, rows)
    print()
    print(f"optimal hit rate {optimal:.2%} ({cacheable} of {total} prompt tokens cacheable)")
    print(f"HF rates are measured on its first {n_hf} requests served one at a time and extrapolated to all {n};"
          f" its TTFT is estimated for the whole queue (request i waits i x mean service time) + measured"
          f" service TTFT {hfr['service_ttft_s']:.2f} s")
    print(f"radixlm TTFT = Request.first_token_time - arrival (all {n} submitted at once)")
    print(f"greedy outputs, lpm vs cache off: {'identical' if same_off else 'DIFFERENT'} ({n} requests); "
          f"lpm vs fcfs: {'identical' if same_fcfs else 'DIFFERENT'}; HF vs lpm: {hf_agree}/{n_hf} identical; "
          f"{llama_row} vs lpm")
    checks = [
        ("radixlm lpm vs HF requests/s", ratios["vs_hf"], f">= {TARGETS['vs_hf']:g}x", met["vs_hf"]),
        ("radixlm lpm vs cache off requests/s", ratios["vs_cache_off"], f">= {TARGETS['vs_cache_off']:g}x",
         met["vs_cache_off"]),
        ("hit rate / optimal", pct(ratios["hit_vs_optimal"]), f">= {TARGETS['hit_vs_optimal']:.0%}", met["hit_vs_optimal"]),
        ("outputs lpm == cache off", None, "identical", same_off),
        ("radixlm lpm vs llama-cpp-python requests/s (same run)", ratios["vs_llamacpp"], "", None),
    ]
    print()
    print_table(["check", "value", "target", "met"], checks)

    md = markdown_table(headers, rows) + "\n\n" + markdown_table(["check", "value", "target", "met"], checks)
    for r in res.values():
        r.pop("outputs")
    save_results("shared_prefix_quick" if args.quick else "shared_prefix", {
        "config": {"requests": n, "hf_requests": n_hf, "prefix_tokens": len(prefix), "question_tokens":
                   [len(q) for q in questions], "output_tokens": OUTPUT_TOKENS, "seed": SEED, "quick": args.quick,
                   "chunk_size": cs, "kv_cache_tokens": EngineConfig().kv_cache_tokens,
                   "busy_cores_before": load_before},
        "optimal_hit_rate": optimal, "prompt_tokens": total, "systems": res, "ratios": ratios, "targets": TARGETS,
        "met": met, "outputs_identical_lpm_cache_off": same_off, "outputs_identical_lpm_fcfs": same_fcfs,
        "hf_outputs_identical_to_lpm": hf_agree, "llamacpp_outputs_identical_to_lpm": llama_agree,
        "llamacpp_error": llama.get("error"), "threads": args.threads,
    }, md)


if __name__ == "__main__":
    main()
