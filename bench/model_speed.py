"""Model speed of one agent at a time: radixlm's weight formats against llama-cpp-python on the same GGUF.

SmolLM2-135M (the embedded Q4_1 GGUF), one run, the same thread count for every system. Measures:
  * this CPU's ceilings, measured in the run: read bandwidth (sum over a 512 MB buffer), copy
    bandwidth (bytes read + written per second), fp32 and bf16 matmul peak (SmolLM2's MLP shape, M=1024);
  * per radixlm format (`dtype`, `quantization`, `compile_decode`, `exact_blocks`): batch-1 decode tok/s (median
    Engine.step() of the decode steps: scheduling, forward, sampling), the bandwidth it implies
    (decode-pass weight bytes x tok/s) against the read bandwidth, decode tok/s of batches of 2 and 4
    sequences (several agents at once), 1,024-token prefill tok/s against
    the bf16 matmul peak, and the compile/warm-up time;
  * llama-cpp-python on the same GGUF and thread count, in a subprocess (a crash is a failed row):
    batch-1 decode (`Llama.eval` one token at a time) and 1,024-token prefill;
  * quality per format: greedy agreement with radixlm fp32 and with llama.cpp (tokens before the first
    divergence over all generated tokens, several prompts) and perplexity on a fixed text, teacher-forced through the
    decode pass token by token (so it measures the decode weights); llama.cpp's perplexity from its
    own logits on the same token ids.

Usage: python -m radixlm.bench.model_speed [--quick] [--threads N] [--decode-tokens N]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

import torch

from radixlm.bench.common import load_average, markdown_table, print_table, save_results, setup_torch, warn_if_busy
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.kv_pool import KVPool
from radixlm.engine.model.context import ForwardContext, use_context
from radixlm.bench.llamacpp_backend import gguf_path
from radixlm.bench.machine import copy_bandwidth_gb_s
from radixlm.protocol import SamplingParams

PREFILL_TOKENS = 1024
BATCHES = (2, 4)  # decode batch sizes measured besides batch 1 (several agents at once)
# "fp32" decodes from the dense float32 weights, as HF transformers does: the reference of the quality
# columns. The default (float32 from exact blocks) and `auto` decode from the GGUF's own blocks in float32.
FORMATS: dict[str, dict[str, Any]] = {
    "fp32": dict(dtype="float32", exact_blocks=False),
    "fp32, exact blocks": dict(dtype="float32"),
    "bf16": dict(dtype="bfloat16"),
    "auto": dict(dtype="auto"),
    "auto, int8, compiled": dict(dtype="auto", quantization="int8", compile_decode=True),
    "auto, q4": dict(dtype="auto", quantization="q4"),
}
QUICK_FORMATS = ("fp32", "fp32, exact blocks", "bf16", "auto, q4")
AGREEMENT_PROMPTS = [
    "Tell me a long story about a dragon and a knight.",
    "Explain how a radix tree stores strings.",
    "List five uses of copper.",
    "What is the capital of France, and why?",
]
PERPLEXITY_TEXT = (
    "The river town of Varnholt was founded in 1187 by salt traders who followed the Ashwater down from "
    "the hills. For three centuries its markets sold salt, wool and timber to the coast, and its bridge, "
    "rebuilt twice after floods, was the only crossing for forty miles. In the winter of 1602 the river "
    "froze so hard that carts drove across the ice, and the town held a fair on it that lasted eleven days. "
    "Today Varnholt has about twelve thousand people, a glassworks, two schools and a museum of the salt "
    "trade, whose oldest ledger records the price of a barrel of salt in 1214 as four silver pennies. "
    "Visitors come in summer for the boat races and in autumn for the cheese market, which fills the "
    "square in front of the old guild hall every Saturday from September to November."
)


# ---------------------------------------------------------------- machine ceilings


def best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine_ceilings(repeats: int) -> dict[str, float]:
    """Read and copy bandwidth (GB/s) and fp32/bf16 matmul peak (GFLOP/s) of this CPU, measured now."""
    buf = torch.ones(128 * 1024 * 1024)  # 512 MB: far beyond the caches
    read = buf.numel() * buf.element_size() / best_seconds(lambda: buf.sum(), repeats) / 1e9
    del buf
    copy = copy_bandwidth_gb_s(mib=512, repeats=repeats + 1)  # best of them all: the first one warms up
    m, k, n = PREFILL_TOKENS, 576, 1536
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        peaks[name] = 2 * m * k * n / best_seconds(lambda: a @ b, repeats * 5) / 1e9
    return {"read_gb_s": read, "copy_gb_s": copy, "matmul_fp32_gflop_s": peaks["fp32"],
            "matmul_bf16_gflop_s": peaks["bf16"]}


def prefill_flops(cfg, tokens: int) -> float:
    """Matmul FLOPs of one causal prefill over `tokens` (layers' projections, attention, one head row)."""
    h, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    q = cfg.num_heads * cfg.head_dim
    per_token = 2 * (h * (q + 2 * kv) + q * h + 3 * h * cfg.intermediate_size) * cfg.num_layers
    attention = 2 * 2 * q * (tokens * (tokens + 1) / 2) * cfg.num_layers
    return per_token * tokens + attention + 2 * h * cfg.vocab_size


# ---------------------------------------------------------------- radixlm


def decode_weight_bytes(model) -> int:
    """Weight bytes one batch-1 decode step reads (the embedding lookup reads one row only)."""
    if model.decode_step is not None:
        return model.decode_step.weight_bytes()
    tensors = [v for layer in model.layers for v in layer.values() if v is not None]
    return sum(t.numel() * t.element_size() for t in [*tensors, model.lm_head, model.norm])


def chat_ids(engine: Engine, text: str) -> list[int]:
    return engine.prompt_ids(messages=[{"role": "user", "content": text}])


def decode_rate(engine: Engine, prompt: list[int], new_tokens: int, batch: int = 1) -> float:
    """Tokens per second of the median decode step (prefill and the trailing pass excluded) for
    `batch` sequences decoding together (prompts: `prompt` less 0, 1, ... trailing tokens)."""
    engine.flush_cache()
    for i in range(batch):
        engine.add_request(prompt[: len(prompt) - i], SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    times = []
    while engine.has_work():
        passes = engine.stats.decode_passes
        t0 = time.perf_counter()
        engine.step()
        if engine.stats.decode_passes > passes:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def prefill_seconds(engine: Engine, ids: list[int]) -> float:
    engine.flush_cache()
    engine.add_request(ids, SamplingParams(max_new_tokens=1, ignore_eos=True))
    t0 = time.perf_counter()
    engine.step()
    dt = time.perf_counter() - t0
    engine.run()
    return dt


def greedy_outputs(engine: Engine, prompts: Sequence[list[int]], new_tokens: int) -> list[list[int]]:
    engine.flush_cache()
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    return [r.output_ids for r in engine.generate_each([(p, params) for p in prompts])]


def agreement(ours: Sequence[list[int]], ref: Sequence[list[int]]) -> float:
    """Tokens before the first divergence from the reference, over all reference tokens."""
    same = 0
    for a, b in zip(ours, ref):
        for x, y in zip(a, b):
            if x != y:
                break
            same += 1
    return same / sum(len(b) for b in ref)


@torch.inference_mode()
def decode_perplexity(model, ids: list[int]) -> float:
    """exp(mean NLL) of ids[1:], each token predicted by a batch-1 decode step over the ones before it."""
    cfg = model.cfg
    pool = KVPool(len(ids) + 2, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype=model.dtype, device=model.device)
    slots = pool.allocator.alloc(len(ids))
    with use_context(ForwardContext.for_extend(pool, [slots[:1]], [0], torch.tensor([0]))):
        logits = model(torch.tensor(ids[:1]), torch.tensor([0]))
    nll = 0.0
    for pos in range(1, len(ids)):
        nll -= float(torch.log_softmax(logits[0], -1)[ids[pos]])
        if pos == len(ids) - 1:
            break
        ctx = ForwardContext.for_decode(pool, slots[None, : pos + 1], torch.tensor([pos + 1]))
        with use_context(ctx):
            logits = model(torch.tensor([ids[pos]]), torch.tensor([pos]))
    return math.exp(nll / (len(ids) - 1))


def measure_format(name: str, options: dict, prompt: list[int], pf_ids: list[int], text_ids: list[int],
                   agree_prompts: list[list[int]], agree_tokens: int, new_tokens: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    engine = Engine.from_model("smollm2", EngineConfig(**options))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in (1, *BATCHES):  # compiles the decode pass per batch size (first KV lengths, then dynamic)
        decode_rate(engine, prompt, 4, batch)
        decode_rate(engine, prompt[:-7], 4, batch)
    prefill_seconds(engine, pf_ids)
    warm_s = time.perf_counter() - t0
    model = engine.model
    row = {
        "options": options, "load_s": load_s, "warmup_s": warm_s,
        "decode_weight_bytes": decode_weight_bytes(model),
        "decode_tok_s": statistics.median(decode_rate(engine, prompt, new_tokens) for _ in range(repeats)),
        "batch_decode_tok_s": {b: statistics.median(decode_rate(engine, prompt, new_tokens, b) for _ in range(repeats))
                               for b in BATCHES},
        "prefill_tok_s": PREFILL_TOKENS / statistics.median(prefill_seconds(engine, pf_ids) for _ in range(repeats)),
        "outputs": greedy_outputs(engine, agree_prompts, agree_tokens),
        "perplexity": decode_perplexity(model, text_ids),
        "load_average": load_average(),
    }
    engine.check_integrity()
    batched = ", ".join(f"b{b} {v:.1f}" for b, v in row["batch_decode_tok_s"].items())
    print(f"  {name}: decode {row['decode_tok_s']:.1f} tok/s ({batched}), prefill {row['prefill_tok_s']:.0f} tok/s, "
          f"ppl {row['perplexity']:.3f}, load {load_s:.1f}s + warm-up {warm_s:.1f}s", flush=True)
    return row


# ---------------------------------------------------------------- llama-cpp-python (subprocess)


def llama_cpp_worker(spec: dict) -> dict:
    """Runs inside the subprocess: decode and prefill speed, perplexity and greedy outputs."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(spec["gguf"], n_threads=spec["threads"], n_threads_batch=spec["threads"], n_ctx=2048,
                n_batch=PREFILL_TOKENS, logits_all=True, verbose=False)
    out: dict[str, Any] = {"version": __import__("llama_cpp").__version__}
    prompt, n = spec["prompt"], spec["new_tokens"]
    rates = []
    for _ in range(spec["repeats"]):
        llm.reset()
        llm.eval(prompt)
        token, times = int(np.argmax(llm.scores[llm.n_tokens - 1])), []
        for _ in range(n):
            t0 = time.perf_counter()
            llm.eval([token])
            times.append(time.perf_counter() - t0)
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        rates.append(1 / statistics.median(times))
    out["decode_tok_s"] = statistics.median(rates)
    prefill = []
    for _ in range(spec["repeats"] + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(spec["prefill_ids"])
        prefill.append(time.perf_counter() - t0)
    out["prefill_tok_s"] = PREFILL_TOKENS / statistics.median(prefill[1:])
    ids = spec["text_ids"]
    llm.reset()
    llm.eval(ids)
    logits = torch.from_numpy(np.array(llm.scores[: len(ids) - 1]))
    nll = -torch.log_softmax(logits.float(), -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    out["perplexity"] = math.exp(float(nll.mean()))
    outputs = []
    for p in spec["agree_prompts"]:
        llm.reset()
        llm.eval(p)
        gen = []
        for _ in range(spec["agree_tokens"]):
            gen.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([gen[-1]])
        outputs.append(gen)
    out["outputs"] = outputs
    return out


def measure_llama_cpp(spec: dict, timeout: float) -> dict:
    """Run the llama-cpp-python measurement in its own process; a failure becomes {'error': reason}."""
    try:
        proc = subprocess.run([sys.executable, "-m", "radixlm.bench.model_speed", "--llama-cpp-worker"],
                              input=json.dumps(spec), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit code {proc.returncode}: {last[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="three formats, fewer tokens, one repeat")
    ap.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    ap.add_argument("--decode-tokens", type=int, default=None, help="new tokens per decode run; default 64, quick 24")
    ap.add_argument("--llama-cpp-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_cpp_worker:
        print(json.dumps(llama_cpp_worker(json.loads(sys.stdin.read()))))
        return
    repeats = 1 if args.quick else 3
    new_tokens = args.decode_tokens or (24 if args.quick else 64)
    agree_tokens = 16 if args.quick else 48
    setup_torch(args.threads)
    busy_before = warn_if_busy()

    ceilings = machine_ceilings(3)
    print(f"ceilings: read {ceilings['read_gb_s']:.1f} GB/s, copy {ceilings['copy_gb_s']:.1f} GB/s, matmul fp32 "
          f"{ceilings['matmul_fp32_gflop_s']:.0f} / bf16 {ceilings['matmul_bf16_gflop_s']:.0f} GFLOP/s", flush=True)

    probe = Engine.from_model("smollm2", EngineConfig(kv_cache_tokens=64))
    cfg = probe.model.cfg
    prompt = chat_ids(probe, AGREEMENT_PROMPTS[0])
    agree_prompts = [chat_ids(probe, t) for t in AGREEMENT_PROMPTS[: 2 if args.quick else 4]]
    text_ids = probe.prompt_ids(text=PERPLEXITY_TEXT)
    gen = torch.Generator().manual_seed(0)
    pf_ids = torch.randint(100, cfg.vocab_size, (PREFILL_TOKENS,), generator=gen).tolist()
    del probe

    formats = {k: FORMATS[k] for k in (QUICK_FORMATS if args.quick else FORMATS)}
    rows = {name: measure_format(name, opts, prompt, pf_ids, text_ids, agree_prompts, agree_tokens, new_tokens, repeats)
            for name, opts in formats.items()}
    gguf = gguf_path("smollm2")
    spec = dict(gguf=gguf, threads=args.threads, prompt=prompt, new_tokens=new_tokens, repeats=repeats,
                prefill_ids=pf_ids, text_ids=text_ids, agree_prompts=agree_prompts, agree_tokens=agree_tokens)
    llama = measure_llama_cpp(spec, timeout=900)
    if "error" in llama:
        print(f"  llama-cpp-python: failed: {llama['error']}", flush=True)
    else:
        print(f"  llama-cpp-python: decode {llama['decode_tok_s']:.1f} tok/s, prefill {llama['prefill_tok_s']:.0f} tok/s, "
              f"ppl {llama['perplexity']:.3f}", flush=True)

    ref = rows["fp32"]["outputs"]
    fp32_ppl = rows["fp32"]["perplexity"]
    bw, peak = ceilings["read_gb_s"], ceilings["matmul_bf16_gflop_s"]
    flops = prefill_flops(cfg, PREFILL_TOKENS)
    headers = ["system / format", "decode b1 tok/s", "GB/s (% of read bw)", *(f"decode b{b} tok/s" for b in BATCHES),
               "prefill tok/s", "% bf16 peak", "vs llama.cpp decode", "greedy agreement", "agreement with llama.cpp", "perplexity (delta)"]
    table = []
    for name, r in rows.items():
        gbs = r["decode_weight_bytes"] * r["decode_tok_s"] / 1e9
        vs = r["decode_tok_s"] / llama["decode_tok_s"] if "decode_tok_s" in llama else None
        table.append([f"radixlm {name}", r["decode_tok_s"], f"{gbs:.1f} ({100 * gbs / bw:.0f}%)",
                      *(r["batch_decode_tok_s"][b] for b in BATCHES), r["prefill_tok_s"],
                      f"{100 * flops * r['prefill_tok_s'] / PREFILL_TOKENS / 1e9 / peak:.0f}%", vs,
                      f"{100 * agreement(r['outputs'], ref):.1f}%",
                      f"{100 * agreement(r['outputs'], llama['outputs']):.1f}%" if "outputs" in llama else "",
                      f"{r['perplexity']:.3f} ({r['perplexity'] - fp32_ppl:+.3f})"])
    if "error" in llama:
        table.append(["llama-cpp-python Q4_1", "failed", llama["error"], *("" for _ in headers[3:])])
    else:
        table.append([f"llama-cpp-python {llama['version']} Q4_1", llama["decode_tok_s"], "",
                      *("" for _ in BATCHES), llama["prefill_tok_s"], "",
                      1.0, f"{100 * agreement(llama['outputs'], ref):.1f}%", "100.0%",
                      f"{llama['perplexity']:.3f} ({llama['perplexity'] - fp32_ppl:+.3f})"])
    print()
    print_table(headers, table)
    print(f"\n{args.threads} threads; SmolLM2-135M from {gguf.rsplit('/', 1)[-1]}; decode prompt {len(prompt)} tokens, "
          f"{new_tokens} new, median of {repeats}; prefill {PREFILL_TOKENS} random tokens; perplexity over "
          f"{len(text_ids)} tokens; agreement over {len(agree_prompts)} prompts x {agree_tokens} greedy tokens.")
    print(f"read bandwidth {bw:.1f} GB/s, copy {ceilings['copy_gb_s']:.1f} GB/s; bf16 matmul peak {peak:.0f} GFLOP/s; "
          f"load average {load_average():.2f} (busy cores before: {busy_before:.1f})")
    results = {"config": {"threads": args.threads, "repeats": repeats, "decode_new_tokens": new_tokens,
                          "prefill_tokens": PREFILL_TOKENS, "quick": args.quick, "busy_cores_before": busy_before},
               "ceilings": ceilings, "radixlm": rows, "llama_cpp": llama}
    path = save_results("model_speed_quick" if args.quick else "model_speed", results, markdown_table(headers, table))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
