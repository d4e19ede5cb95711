"""Fork/join programs of the frontend language: tree-of-thought (fork 3, two levels) and parallel
judge (fork 6, then join), N programs each run as one `run_batch`, on three systems in one run:
radixlm, radixlm with the fork hint (prefix-only request before the branches) off, and radixlm
with the radix cache off. Target: radixlm >= 3x the cache-off programs/s.

    python -m radixlm.bench.fork_programs [--programs 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time


from radixlm.bench.common import machine_info, print_table, save_results, warn_if_busy

import radixlm as sgl
from radixlm.bench.workloads.tree_of_thought import EXAMPLES, TOPICS, tree_of_thought


@sgl.function
def parallel_judge(s, topic, hint=True):
    s += sgl.system("You are a strict judge of short essays. " + EXAMPLES)
    s += sgl.user(f"Judge this essay title: 'A practical guide to {topic}'.")
    s += sgl.assistant_begin()
    aspects = ["clarity", "accuracy", "originality", "tone", "length", "usefulness"]
    judges = s.fork(6, cache_prefix=hint)
    judges += [f" On {a}:" for a in aspects]
    judges += sgl.gen("judgement", max_tokens=12, stop="\n")
    judges.join()
    s += " Overall:" + sgl.gen("overall", max_tokens=12, stop="\n")
    s += sgl.assistant_end()


def run_system(endpoint: str, programs: int, hint: bool, **engine_options) -> dict:
    client = sgl.connect(endpoint, model="smollm2", timeout=1800, **engine_options)
    sgl.set_default_backend(sgl.EngineBackend(client))
    out = {}
    try:
        for name, prog in (("tree-of-thought", tree_of_thought), ("parallel judge", parallel_judge)):
            args = [{"topic": TOPICS[i % len(TOPICS)] + f" (case {i})", "hint": hint} for i in range(programs)]
            prog.run_batch(args[:2])  # warm-up: kernels, chat-template probe
            before = client.stats()
            start = time.perf_counter()
            prog.run_batch(args, num_threads=programs)
            wall = time.perf_counter() - start
            after = client.stats()
            prompt = after["prompt_tokens"] - before["prompt_tokens"]
            cached = after["cached_tokens"] - before["cached_tokens"]
            out[name] = {"programs_per_s": programs / wall, "wall_s": wall, "hit_rate": cached / prompt if prompt else 0.0,
                         "computed_tokens": after["computed_tokens"] - before["computed_tokens"]}
    finally:
        client.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=20)
    args = parser.parse_args()
    busy = warn_if_busy()
    tmp = tempfile.mkdtemp(prefix="radixlm-bench-")
    systems = {
        "radixlm": run_system(f"ipc://{tmp}/a.sock", args.programs, hint=True),
        "radixlm, fork hint off": run_system(f"ipc://{tmp}/b.sock", args.programs, hint=False),
        "radixlm, cache off": run_system(f"ipc://{tmp}/c.sock", args.programs, hint=True, radix_cache=False),
    }
    rows = []
    for workload in ("tree-of-thought", "parallel judge"):
        off = systems["radixlm, cache off"][workload]["programs_per_s"]
        for name, res in systems.items():
            r = res[workload]
            rows.append([workload, name, r["programs_per_s"], r["wall_s"], f"{100 * r['hit_rate']:.1f}%",
                         r["computed_tokens"], r["programs_per_s"] / off])
    print_table(["workload", "system", "programs/s", "wall s", "hit rate", "computed tokens", "vs cache off"], rows)
    for workload in ("tree-of-thought", "parallel judge"):
        ratio = systems["radixlm"][workload]["programs_per_s"] / systems["radixlm, cache off"][workload]["programs_per_s"]
        print(f"{workload}: radixlm / cache off = {ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'MISSED'})")
    save_results("fork_programs", {"machine": machine_info(), "busy_cores_before": busy, "programs": args.programs,
                                   "systems": systems})


if __name__ == "__main__":
    main()
