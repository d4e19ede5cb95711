"""GPU bench: raw model speed of radixlm vs HF transformers on random-weight Llama-3.2-1B and Llama-3-8B (bf16).

Measures, in one run, for each model:
  * decode tok/s at batch 1, 16 and 64 (every row `--context` tokens deep), radixlm vs HF;
  * prefill tok/s of one `--prefill-tokens` prompt, radixlm vs HF;
  * the memory bandwidth batch-1 decode achieves (weights + KV read per token x tok/s) against the GPU's
    peak (memory clock x bus width, or `--peak-gbps`).

What is timed (CUDA-synchronized wall time, median of `--repeats`):
  * radixlm decode: `--steps` decode steps of the model with the triton backend; each step builds its
    ForwardContext as the engine does and feeds back the argmax. The model runs eagerly (no CUDA graphs).
    The KV of the context is not prefilled: decode speed does not depend on the values in the pool.
  * HF decode: the same number of steps of LlamaForCausalLM (sdpa) with its DynamicCache after a
    prefill of the same context (not timed), argmax fed back.
  * prefill: radixlm = one extend pass over the prompt (logits of the last token only); HF = one forward
    with logits_to_keep=1.
Both models have random weights of the real shapes (radixlm.engine.model.presets): nothing is downloaded.

Usage: python -m radixlm.bench.gpu_speed [--models llama-3.2-1b,llama-3-8b] [--batches 1,16,64] [--context 512]
           [--steps 64] [--prefill-tokens 2048] [--repeats 3] [--peak-gbps X] [--no-hf]
       python -m radixlm.bench.gpu_speed --cpu-smoke   (the same code on CPU with a 1-layer torch model: checks the
                                                plumbing, the figures mean nothing)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from radixlm.engine.attention.select import make_attention
from radixlm.engine.kv_pool import KVPool
from radixlm.engine.model.context import ForwardContext, use_context
from radixlm.engine.model.presets import preset_config, preset_dict, random_model

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_speed.json"


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    samples = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bandwidth(device: torch.device, override_gbps: float | None) -> float | None:
    """Bytes/s: DDR memory clock (kHz) x 2 x bus width (bits) / 8, as CUDA reports them."""
    if override_gbps:
        return override_gbps * 1e9
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    clock, bus = getattr(p, "memory_clock_rate", 0), getattr(p, "memory_bus_width", 0)
    return 2 * clock * 1e3 * bus / 8 if clock and bus else None


class Ours:
    """radixlm's model over a KV pool sized for the largest batch."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
        self.cfg = preset_config(name, **args.overrides)
        self.model = random_model(self.cfg, make_attention(args.attention, device), device, dtype)
        self.device = device
        slots = max(max(args.batches) * (args.context + args.steps), args.prefill_tokens) + 1
        self.pool = KVPool(slots, self.cfg.num_layers, self.cfg.num_kv_heads, self.cfg.head_dim, dtype, device)

    def weight_bytes(self) -> int:
        """Bytes read per decode step: every layer tensor, the final norm and the lm_head (the embedding
        lookup reads one row per token)."""
        tensors = [t for layer in self.model.layers for t in layer.values() if t is not None]
        tensors += [self.model.norm, self.model.lm_head]
        return sum(t.numel() * t.element_size() for t in tensors)

    def decode(self, batch: int, context: int, steps: int) -> None:
        width = context + steps
        table = torch.arange(1, 1 + batch * width, device=self.device).view(batch, width)
        ids = torch.zeros(batch, dtype=torch.long, device=self.device)
        for step in range(steps):
            lens = torch.full((batch,), context + step + 1)
            ctx = ForwardContext.for_decode(self.pool, table[:, : context + step + 1], lens)
            with use_context(ctx):
                logits = self.model(ids, (lens - 1).to(self.device))
            ids = logits.argmax(-1)

    def prefill(self, tokens: int) -> None:
        ids = torch.randint(0, self.cfg.vocab_size, (tokens,), device=self.device)
        slots = torch.arange(1, tokens + 1, device=self.device)
        ctx = ForwardContext.for_extend(self.pool, [slots], [0], torch.tensor([tokens - 1]))
        with use_context(ctx):
            self.model(ids, torch.arange(tokens, device=self.device)).argmax(-1)


class HF:
    """LlamaForCausalLM of the same config, random weights, bf16, sdpa attention."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM, LlamaConfig

        config = LlamaConfig(**preset_dict(name, **args.overrides))
        with torch.device(device):
            self.model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype).eval()
        self.vocab, self.device = config.vocab_size, device

    @torch.inference_mode()
    def decode(self, batch: int, context: int, steps: int) -> float:
        """Seconds of `steps` decode steps after an untimed prefill of the context."""
        ids = torch.randint(0, self.vocab, (batch, context), device=self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            out = self.model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        sync(self.device)
        return time.perf_counter() - start

    @torch.inference_mode()
    def prefill(self, tokens: int) -> None:
        ids = torch.randint(0, self.vocab, (1, tokens), device=self.device)
        self.model(input_ids=ids, use_cache=True, logits_to_keep=1).logits.argmax(-1)


def bench_model(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                peak: float | None) -> dict:
    row: dict = {"model": name}
    ours = Ours(name, args, device, dtype)
    row["attention"] = type(ours.model.attention).__name__
    row["params_b"] = ours.cfg.num_parameters() / 1e9
    weight_bytes = ours.weight_bytes()
    kv_bytes = ours.pool.bytes_per_token() * args.context
    for b in args.batches:
        ours.decode(b, args.context, 2)  # compile the kernels for this shape
        t = median_seconds(partial(ours.decode, b, args.context, args.steps), args.repeats, device)
        row[f"ours_decode_b{b}"] = b * args.steps / t
    ours.prefill(args.prefill_tokens)
    t = median_seconds(partial(ours.prefill, args.prefill_tokens), args.repeats, device)
    row["ours_prefill"] = args.prefill_tokens / t
    row["bytes_per_b1_step"] = weight_bytes + kv_bytes
    del ours
    free(device)
    if not args.no_hf:
        hf = HF(name, args, device, dtype)
        for b in args.batches:
            hf.decode(b, args.context, 2)  # warm up
            t = statistics.median(hf.decode(b, args.context, args.steps) for _ in range(args.repeats))
            row[f"hf_decode_b{b}"] = b * args.steps / t
            free(device)
        hf.prefill(args.prefill_tokens)
        t = median_seconds(partial(hf.prefill, args.prefill_tokens), args.repeats, device)
        row["hf_prefill"] = args.prefill_tokens / t
        del hf
        free(device)
    for who in ("ours", "hf"):
        if f"{who}_decode_b1" in row:
            row[f"{who}_b1_gbps"] = row["bytes_per_b1_step"] * row[f"{who}_decode_b1"] / 1e9
            if peak:
                row[f"{who}_b1_peak_frac"] = row["bytes_per_b1_step"] * row[f"{who}_decode_b1"] / peak
    return row


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def report(rows: list[dict], args: argparse.Namespace, peak: float | None) -> None:
    print(f"\n{'':24}" + "".join(f"{r['model']:>36}" for r in rows))
    print(f"{'':24}" + "".join(f"{'radixlm':>12}{'HF':>12}{'ratio':>12}" for _ in rows))
    metrics = [(f"decode b={b} tok/s", f"decode_b{b}") for b in args.batches] + [
        (f"prefill {args.prefill_tokens} tok/s", "prefill"), ("b=1 bandwidth GB/s", "b1_gbps"),
        ("b=1 share of peak", "b1_peak_frac")]
    for label, key in metrics:
        line = f"{label:24}"
        for r in rows:
            ours, hf = r.get(f"ours_{key}"), r.get(f"hf_{key}")
            ratio = ours / hf if ours and hf else None
            line += "".join(f"{_fmt(v):>12}" for v in (ours, hf, ratio))
        print(line)
    print(f"\npeak bandwidth: {_fmt(peak / 1e9) + ' GB/s' if peak else 'unknown (give --peak-gbps)'}; "
          f"context {args.context} tokens, {args.steps} decode steps, median of {args.repeats}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.3f}" if v < 10 else f"{v:,.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama-3.2-1b,llama-3-8b")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--context", type=int, default=512, help="tokens already in each row's KV at decode")
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed per repeat")
    parser.add_argument("--prefill-tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-gbps", type=float, help="the GPU's peak memory bandwidth, if CUDA's figure is wrong")
    parser.add_argument("--no-hf", action="store_true", help="skip the HF transformers peer")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the plumbing on CPU with a 1-layer model")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.overrides, args.attention = {}, "triton"
    if args.cpu_smoke:
        device, dtype = torch.device("cpu"), torch.float32
        args.overrides = dict(num_hidden_layers=1, vocab_size=1024, bos_token_id=0, eos_token_id=1)
        args.attention, args.batches, args.context, args.steps, args.prefill_tokens, args.repeats = (
            "torch", [1, 2], 16, 2, 32, 1)
    elif not torch.cuda.is_available():
        print("bench/gpu_speed.py needs a CUDA GPU and none is visible (torch.cuda.is_available() is False; "
              f"torch {torch.__version__}). Run it on a GPU machine; --cpu-smoke only checks the plumbing.",
              file=sys.stderr)
        return 2
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    peak = peak_bandwidth(device, args.peak_gbps)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {machine}; torch {torch.__version__}")
    torch.manual_seed(0)
    rows = [bench_model(name, args, device, dtype, peak) for name in args.models.split(",")]
    report(rows, args, peak)
    if not args.cpu_smoke:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "peak_bytes_per_s": peak,
                                       "args": {k: v for k, v in vars(args).items()}, "rows": rows}, indent=2))
        print(f"saved {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
