"""Foundation bench: raw model speed of radixlm vs HF transformers on SmolLM2-135M (CPU, float32).

Measures, in one run:
  * batch-1 decode tok/s (radixlm and HF), with the memory bandwidth it implies
    (weights read per token x tok/s; the KV cache reads are ignored, they are tiny at this context);
  * 1,024-token prefill tok/s (radixlm and HF);
  * radixlm aggregate decode tok/s at batch 8 and 32.

What is timed:
  * radixlm decode: wall time of each Engine.step() (scheduling + forward + argmax + bookkeeping) is
    recorded; the rate counts only DECODE steps in which all B requests are running and each gets a
    token. Prefill steps and the trailing "ghost" pass (which only writes the last token's KV after
    the results were returned) are excluded. The e2e column is B x N / total time including those.
  * HF decode: model.generate greedy with min_new_tokens = max_new_tokens; rate =
    (N - 1) / (median t(N new) - median t(1 new)), i.e. prefill excluded the same way.
  * prefill: radixlm = one Engine.step() that extends a 1,024-token prompt from an empty cache
    (flushed each repeat) and samples its first token; HF = one forward over the 1,024 tokens with a
    fresh KV cache and logits_to_keep=1 (what generate's prefill does).

Usage: python bench/model_speed.py [--quick] [--repeats N] [--decode-tokens N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    load_hf_model, markdown_table, median, median_time, print_table, save_results, setup_torch, warn_if_busy,
)

from radixlm.engine.engine import Engine, EngineConfig  # noqa: E402
from radixlm.engine.loader import load_model  # noqa: E402
from radixlm.engine.request import SamplingParams  # noqa: E402

PREFILL_TOKENS = 1024
BATCHES = (1, 8, 32)
TARGETS = {"decode_b1": 2.0, "prefill": 1.0, "decode_b32": 15.0}


def decode_prompt(loaded) -> list[int]:
    tok = loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "Tell me a long story about a dragon and a knight."}])
    return tok.encode(text)


def prefill_ids(vocab: int) -> list[int]:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(100, vocab, (PREFILL_TOKENS,), generator=gen).tolist()


def weight_bytes(model) -> int:
    """Bytes of weights streamed per decoded token: every layer matrix/norm plus the lm_head
    (tied to the embedding, read once in full); the embedding lookup reads one row only."""
    n = sum(v.numel() * v.element_size() for layer in model.layers for v in layer.values() if v is not None)
    return n + model.lm_head.numel() * model.lm_head.element_size() + model.norm.numel() * model.norm.element_size()


# ---------------------------------------------------------------- radixlm


def engine_decode(engine: Engine, prompt: list[int], batch: int, new_tokens: int) -> dict:
    """One run of `batch` copies of `prompt`; returns the steady-state decode rate and e2e rate."""
    engine.flush_cache()
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    for _ in range(batch):
        engine.add_request(prompt, params)
    decode_time, decode_tokens, steps = 0.0, 0, 0
    while engine.has_work():
        full = len(engine.scheduler.running) == batch
        passes, gen = engine.stats.decode_passes, engine.stats.generated_tokens
        t0 = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t0
        got = engine.stats.generated_tokens - gen
        if full and engine.stats.decode_passes > passes and got == batch:
            decode_time += dt
            decode_tokens += got
            steps += 1
    total = time.perf_counter() - start
    return {
        "decode_tok_s": decode_tokens / decode_time if decode_time else 0.0,
        "e2e_tok_s": batch * new_tokens / total,
        "decode_steps_timed": steps,
        "total_s": total,
    }


def engine_prefill(engine: Engine, ids: list[int]) -> float:
    """Seconds of the single extend step over `ids` from an empty cache."""
    engine.flush_cache()
    engine.add_request(ids, SamplingParams(max_new_tokens=1, ignore_eos=True))
    passes = engine.stats.extend_passes
    t0 = time.perf_counter()
    engine.step()
    dt = time.perf_counter() - t0
    assert engine.stats.extend_passes == passes + 1
    engine.run()  # drain the trailing ghost pass
    return dt


# ---------------------------------------------------------------- HF transformers


def hf_generate_time(model, ids: list[int], new_tokens: int, eos: int) -> float:
    inp = torch.tensor([ids])
    mask = torch.ones_like(inp)
    t0 = time.perf_counter()
    out = model.generate(inp, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=eos)
    dt = time.perf_counter() - t0
    assert out.shape[1] == len(ids) + new_tokens, out.shape
    return dt


def hf_prefill_time(model, ids: list[int]) -> float:
    from transformers import DynamicCache

    inp = torch.tensor([ids])
    t0 = time.perf_counter()
    model(input_ids=inp, past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- main


def measure_radixlm(loaded, prompt: list[int], pf_ids: list[int], new_tokens: int, repeats: int) -> tuple[dict, float]:
    """Decode tok/s per batch size and prefill seconds for one loaded model (shapes warmed up first)."""
    engine = Engine(loaded.model, EngineConfig(), loaded.eos_token_ids, loaded.tokenizer)
    name = f"radixlm {str(loaded.model.dtype).removeprefix('torch.')}"
    for b in BATCHES:
        engine_decode(engine, prompt, b, 4)
    engine_prefill(engine, pf_ids)
    rl = {}
    for b in BATCHES:
        runs = [engine_decode(engine, prompt, b, new_tokens) for _ in range(repeats)]
        rl[b] = {"decode_tok_s": median([r["decode_tok_s"] for r in runs]),
                 "e2e_tok_s": median([r["e2e_tok_s"] for r in runs]),
                 "decode_steps_timed": runs[0]["decode_steps_timed"],
                 "samples_decode_tok_s": [r["decode_tok_s"] for r in runs]}
        print(f"  {name} batch {b:>2}: {rl[b]['decode_tok_s']:.1f} decode tok/s", flush=True)
    prefill_s = median([engine_prefill(engine, pf_ids) for _ in range(repeats)])
    print(f"  {name} prefill: {PREFILL_TOKENS / prefill_s:.0f} tok/s", flush=True)
    engine.check_integrity()
    return rl, prefill_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and one repeat")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per measurement (median); default 3, quick 1")
    ap.add_argument("--decode-tokens", type=int, default=None, help="new tokens per decode run; default 64, quick 24")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    new_tokens = args.decode_tokens or (24 if args.quick else 64)
    setup_torch()
    load_before = warn_if_busy()

    loaded = load_model("smollm2")
    prompt = decode_prompt(loaded)
    pf_ids = prefill_ids(loaded.config.vocab_size)
    wbytes = weight_bytes(loaded.model)
    eos = min(loaded.eos_token_ids) if loaded.eos_token_ids else 0
    print(f"SmolLM2-135M float32, {torch.get_num_threads()} threads; decode prompt {len(prompt)} tokens, "
          f"{new_tokens} new tokens, prefill {PREFILL_TOKENS} tokens, median of {repeats}; "
          f"weights read per decoded token {wbytes / 1e6:.0f} MB")

    results: dict = {"config": {"repeats": repeats, "decode_new_tokens": new_tokens, "decode_prompt_tokens": len(prompt),
                                "prefill_tokens": PREFILL_TOKENS, "weight_bytes": wbytes, "quick": args.quick,
                                "busy_cores_before": load_before}}

    rl, rl_prefill_s = measure_radixlm(loaded, prompt, pf_ids, new_tokens, repeats)
    bf16 = load_model("smollm2", dtype=torch.bfloat16)
    rl_bf, rl_bf_prefill_s = measure_radixlm(bf16, prompt, pf_ids, new_tokens, repeats)
    del bf16

    # HF transformers
    hf = load_hf_model(loaded.folder)
    with torch.inference_mode():
        hf_generate_time(hf, prompt, 2, eos)
        hf_prefill_time(hf, pf_ids)
        t_n, s_n = median_time(lambda: hf_generate_time(hf, prompt, new_tokens, eos), repeats)
        t_1, s_1 = median_time(lambda: hf_generate_time(hf, prompt, 1, eos), repeats)
        hf_pf_s, s_pf = median_time(lambda: hf_prefill_time(hf, pf_ids), repeats)
    hf_decode = (new_tokens - 1) / (t_n - t_1)
    hf_e2e = new_tokens / t_n
    hf_prefill = PREFILL_TOKENS / hf_pf_s
    print(f"  HF decode: {hf_decode:.1f} tok/s, prefill {hf_prefill:.0f} tok/s", flush=True)

    rl_prefill = PREFILL_TOKENS / rl_prefill_s
    ratios = {
        "decode_b1": rl[1]["decode_tok_s"] / hf_decode,
        "prefill": rl_prefill / hf_prefill,
        "decode_b32": rl[32]["decode_tok_s"] / hf_decode,
    }
    met = {k: ratios[k] >= TARGETS[k] for k in TARGETS}
    gbs = lambda tps: wbytes * tps / 1e9  # noqa: E731

    headers = ["system", "measurement", "tok/s", "e2e tok/s", "GB/s", "vs HF b1/prefill", "target", "met"]
    rows = [
        ["HF transformers", "decode batch 1", hf_decode, hf_e2e, gbs(hf_decode), 1.0, "", ""],
        ["radixlm", "decode batch 1", rl[1]["decode_tok_s"], rl[1]["e2e_tok_s"], gbs(rl[1]["decode_tok_s"]),
         ratios["decode_b1"], ">= 2x", met["decode_b1"]],
        ["radixlm", "decode batch 8 (aggregate)", rl[8]["decode_tok_s"], rl[8]["e2e_tok_s"], None,
         rl[8]["decode_tok_s"] / hf_decode, "", ""],
        ["radixlm", "decode batch 32 (aggregate)", rl[32]["decode_tok_s"], rl[32]["e2e_tok_s"], None,
         ratios["decode_b32"], ">= 15x", met["decode_b32"]],
        ["HF transformers", f"prefill {PREFILL_TOKENS} tokens", hf_prefill, None, None, 1.0, "", ""],
        ["radixlm", f"prefill {PREFILL_TOKENS} tokens", rl_prefill, None, None, ratios["prefill"], ">= 1x",
         met["prefill"]],
        ["radixlm bf16", "decode batch 1", rl_bf[1]["decode_tok_s"], rl_bf[1]["e2e_tok_s"], gbs(rl_bf[1]["decode_tok_s"]) / 2,
         rl_bf[1]["decode_tok_s"] / hf_decode, "", ""],
        ["radixlm bf16", "decode batch 8 (aggregate)", rl_bf[8]["decode_tok_s"], rl_bf[8]["e2e_tok_s"], None,
         rl_bf[8]["decode_tok_s"] / hf_decode, "", ""],
        ["radixlm bf16", "decode batch 32 (aggregate)", rl_bf[32]["decode_tok_s"], rl_bf[32]["e2e_tok_s"], None,
         rl_bf[32]["decode_tok_s"] / hf_decode, "", ""],
        ["radixlm bf16", f"prefill {PREFILL_TOKENS} tokens", PREFILL_TOKENS / rl_bf_prefill_s, None, None,
         PREFILL_TOKENS / rl_bf_prefill_s / hf_prefill, "", ""],
    ]
    print()
    print_table(headers, rows)
    print()
    print("tok/s: decode = steady-state decode steps only (prefill excluded); prefill = one 1,024-token pass.")
    print("e2e tok/s: B x new tokens / whole run (prefill, and for radixlm the trailing ghost pass, included).")
    print("GB/s: weights read per decoded token x batch-1 decode tok/s (KV reads ignored; bf16 reads half the bytes).")
    print("targets are judged on float32 (the precision HF runs here); bf16 rows show the --dtype bfloat16 option.")
    print(f"targets met: {sum(met.values())}/{len(met)}")

    md = markdown_table(headers, rows)
    results.update({
        "radixlm": {"decode": {str(b): v for b, v in rl.items()}, "prefill_tok_s": rl_prefill, "prefill_s": rl_prefill_s},
        "radixlm_bf16": {"decode": {str(b): v for b, v in rl_bf.items()}, "prefill_tok_s": PREFILL_TOKENS / rl_bf_prefill_s},
        "hf": {"decode_tok_s": hf_decode, "e2e_tok_s": hf_e2e, "t_new_tokens_s": s_n, "t_1_token_s": s_1,
               "prefill_tok_s": hf_prefill, "prefill_samples_s": s_pf},
        "bandwidth_gb_s": {"radixlm_b1": gbs(rl[1]["decode_tok_s"]), "hf_b1": gbs(hf_decode)},
        "ratios": ratios, "targets": TARGETS, "met": met,
    })
    path = save_results("model_speed_quick" if args.quick else "model_speed", results, md)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
