"""JSON extraction (the SGLang paper's "JSON decoding"): fill a 5-field schema from a paragraph,
50 paragraphs submitted at once, with jump-forward on and off in one run.

Prints programs/s for both (target: on >= 1.5x off), forward passes, validity of every output, and
the grammar's per-token overhead (mask fill + token consume) as a share of engine step time
(target < 5%).

    python -m radixlm.bench.json_extraction [--paragraphs 50] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import time


import jsonschema
import torch
from radixlm.bench.common import machine_info, print_table, save_results, setup_torch, warn_if_busy

import radixlm.engine.engine as engine_module
from radixlm.bench.workloads.json_extraction import INSTRUCTION, SCHEMA, paragraphs
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.grammar import GrammarState
from radixlm.engine.loader import load_model
from radixlm.protocol import Constraint, SamplingParams


class GrammarTimer:
    """Wraps the engine's grammar entry points to add up the seconds they take."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.fill, self.consume = engine_module.fill_allowed, GrammarState.consume
        timer = self

        def fill(*args, **kwargs):
            t = time.perf_counter()
            try:
                return timer.fill(*args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - t

        def consume(state, token):
            t = time.perf_counter()
            try:
                return timer.consume(state, token)
            finally:
                timer.seconds += time.perf_counter() - t

        engine_module.fill_allowed, GrammarState.consume = fill, consume


def run(loaded, jump_forward: bool, prompts: list[list[int]], dtype: str, sequential: bool = False) -> dict:
    """All prompts at once (or one after another), fresh cache; programs/s, passes, validity."""
    engine = Engine(loaded.model, EngineConfig(jump_forward=jump_forward, dtype=dtype), loaded.eos_token_ids, loaded.tokenizer)
    params = SamplingParams(max_new_tokens=128, constraint=Constraint(json_schema=SCHEMA))
    engine.generate(prompts[:2], params)  # warm-up: grammar compile, kernels
    engine.flush_cache()
    engine.stats = type(engine.stats)()
    start = time.perf_counter()
    if sequential:
        results = [engine.generate([p], params)[0] for p in prompts]
    else:
        results = engine.generate(prompts, params)
    wall = time.perf_counter() - start
    valid = 0
    for r in results:
        try:
            jsonschema.validate(json.loads(r.text), SCHEMA)
            valid += 1
        except (json.JSONDecodeError, jsonschema.ValidationError):
            pass
    return {"programs_per_s": len(prompts) / wall, "wall_s": wall, "forward_passes": engine.stats.forward_passes,
            "output_tokens": sum(r.completion_tokens for r in results), "valid": valid,
            "busy_s": engine.stats.busy_seconds, "outputs": [r.output_ids for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paragraphs", type=int, default=50)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--sequential", type=int, default=10, help="programs run one at a time for the batch-1 rows")
    args = parser.parse_args()
    setup_torch()
    busy = warn_if_busy()
    loaded = load_model("smollm2", dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype])
    tok = loaded.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([
        {"role": "system", "content": INSTRUCTION},
        {"role": "user", "content": p}])) for p in paragraphs(args.paragraphs)]
    timer = GrammarTimer()
    res = {}
    for jump in (True, False):
        timer.seconds = 0.0
        res[jump] = run(loaded, jump, prompts, args.dtype)
        res[jump]["grammar_s"] = timer.seconds
    seq = {jump: run(loaded, jump, prompts[: args.sequential], args.dtype, sequential=True) for jump in (True, False)}
    on, off = res[True], res[False]
    ratio = on["programs_per_s"] / off["programs_per_s"]
    share = off["grammar_s"] / off["busy_s"]
    rows = [[f"jump-forward {name}", r["programs_per_s"], r["forward_passes"], r["output_tokens"],
             f"{r['valid']}/{args.paragraphs}", 100 * r["grammar_s"] / r["busy_s"]] for name, r in (("on", on), ("off", off))]
    rows += [[f"jump-forward {name}, one program at a time ({args.sequential})", r["programs_per_s"], r["forward_passes"],
              r["output_tokens"], f"{r['valid']}/{args.sequential}", None] for name, r in (("on", seq[True]), ("off", seq[False]))]
    print_table(["system", "programs/s", "forward passes", "output tokens", "valid JSON", "grammar % of step time"], rows)
    print(f"one program at a time: jump-forward {seq[True]['programs_per_s'] / seq[False]['programs_per_s']:.2f}x")
    print(f"\nspeed-up of jump-forward: {ratio:.2f}x (target >= 1.5x: {'met' if ratio >= 1.5 else 'MISSED'})")
    print(f"grammar overhead per decoded token, jump-forward off: {100 * share:.2f}% of step time "
          f"(target < 5%: {'met' if share < 0.05 else 'MISSED'})")
    print(f"greedy outputs identical with jump-forward on and off: {on['outputs'] == off['outputs']}")
    save_results("json_extraction", {"machine": machine_info(), "busy_cores_before": busy, "dtype": args.dtype,
                                     "jump_on": {k: v for k, v in on.items() if k != "outputs"},
                                     "jump_off": {k: v for k, v in off.items() if k != "outputs"},
                                     "speedup": ratio, "grammar_share": share,
                                     "sequential": {str(k): {x: y for x, y in v.items() if x != "outputs"} for k, v in seq.items()}})


if __name__ == "__main__":
    main()
