"""Agents under memory pressure: N concurrent multi-step agents whose tools take 0.2-3 s, on a KV pool
that holds about a third of their combined working sets, served by one in-process engine on SmolLM2.

Every agent shares a system prompt, has a task of its own, and runs `--steps` calls; after each call
its tool runs (a real sleep, drawn once per run so every system sees the same latencies) and the next
call's prompt is the previous prompt + the call's output + the tool's observation. The agent ends its
trace when its last call returns. By default every agent starts at once; with `--concurrency C`, C
agents run at a time and each agent that ends hands its place to the next (a closed loop of C
users), and the pool is sized on the working sets of C agents. Systems (same workload, same model,
one run):

  retention+program  trace pins + the program-level policy (least attained service, then program age;
                     program admission runs only as many agents as the pool holds the working sets
                     of; admission releases only lower-ranked programs' pins unless the engine would idle)
  retention          trace pins, lpm policy
  lru                no pins, lpm (the engine before trace retention)
  ttl-pins           SGLang-style fixed-TTL pins (released by TTL or, under pressure, oldest first)
  fcfs               no pins, call-level FCFS (the baseline of the completion-time target)

then `retention+program` and `lru` again on a pool that holds everything (no memory pressure).

`--simulate` runs the same engine (scheduler, radix cache, pins, policy: all real) on a simulated
model in simulated time: each forward pass advances a virtual clock by a cost model of the real run's
engine (SmolLM2 with `q4` decode, 2 threads; `--cost-model amd-epyc` (the default) or `intel-xeon`,
each measured on that CPU: `CostModel`), and tools advance it too, so the figures do not depend on
the machine's load. It is a supplement to the real-model run, not a replacement.

    python -m radixlm.bench.agents_under_pressure --agents 32
    python -m radixlm.bench.agents_under_pressure --agents 32 --simulate
    python -m radixlm.bench.agents_under_pressure --agents 32 --simulate --cost-model intel-xeon
    python -m radixlm.bench.agents_under_pressure --agents 32 --dtype auto --quantization q4
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.loader import load_model
from radixlm.engine.model.context import ForwardMode, current_context
from radixlm.engine.model.decode_step import NATIVE_LAYERS_BATCH, QUANTIZATIONS
from radixlm.engine.model.precision import DTYPE_CHOICES
from radixlm.protocol import SamplingParams

SYSTEMS = {
    "retention+program": dict(trace_retention=True, policy="program"),
    "retention": dict(trace_retention=True, policy="lpm"),
    "lru": dict(trace_retention=False, policy="lpm"),
    "ttl-pins": dict(trace_retention=True, policy="lpm", max_pinned_share=1.0),
    "fcfs": dict(trace_retention=False, policy="fcfs"),
}


@dataclass
class Workload:
    """Token ids and tool latencies of every agent, drawn once from a seed."""

    system: list[int]
    tasks: list[list[int]]
    observations: list[list[list[int]]]  # [agent][step] ids the tool returns after that step
    tool_seconds: list[list[float]]  # [agent][step]
    output_tokens: int

    @property
    def own_tokens(self) -> list[int]:
        """Each agent's final path less the system prompt: its task, outputs and observations."""
        return [len(t) + sum(len(o) + self.output_tokens for o in obs) for t, obs in zip(self.tasks, self.observations)]

    def working_set(self, agents: int) -> int:
        """Tokens of the final paths of `agents` agents of the mean size (the system prompt counted
        once); for all of them, exactly their combined final paths."""
        own = self.own_tokens
        return len(self.system) + round(agents * sum(own) / len(own))


def make_workload(agents: int, steps: int, seed: int, vocab: int, system_len: int, task_len: int,
                  obs_len: tuple[int, int], output_tokens: int, tool_s: tuple[float, float]) -> Workload:
    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(100, vocab) for _ in range(n)]  # noqa: E731  (ids >= 100: no special tokens)
    return Workload(
        system=ids(system_len),
        tasks=[ids(task_len) for _ in range(agents)],
        observations=[[ids(rng.randint(*obs_len)) for _ in range(steps)] for _ in range(agents)],
        tool_seconds=[[rng.uniform(*tool_s) for _ in range(steps)] for _ in range(agents)],
        output_tokens=output_tokens,
    )


class RealClock:
    """Wall-clock time; tools really sleep."""

    def now(self) -> float:
        return time.perf_counter()

    def wait_until(self, when: float) -> None:
        time.sleep(max(0.0, min(when - self.now(), 0.05)))


class VirtualClock:
    """Simulated time: advanced by the simulated model's passes and by waiting for tools."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wait_until(self, when: float) -> None:
        self.t = max(self.t, when)


@dataclass(frozen=True)
class SimulatedConfig:
    vocab_size: int = 49152
    num_layers: int = 1
    num_kv_heads: int = 1
    head_dim: int = 1
    max_position_embeddings: int = 8192


@dataclass(frozen=True)
class CostModel:
    """Seconds a forward pass of SmolLM2-135M (`auto` + `q4`, 2 threads) takes on one CPU:

    - decode of up to `q4_max_rows` rows (q4 weights through the native decoder layers):
      `q4_min_s + (rows - 1) * q4_row_s`;
    - decode of more rows (dense bf16 weights): `dense_pass_s + rows * dense_row_s`;
    - extend (prefill, bf16): `extend_pass_s + tokens * prefill_token_s`;
    - plus `pair_s` per (computed token x context position) attention pair."""

    cpu: str
    q4_min_s: float
    q4_row_s: float
    dense_pass_s: float
    dense_row_s: float
    extend_pass_s: float
    prefill_token_s: float
    pair_s: float
    q4_max_rows: int = NATIVE_LAYERS_BATCH


# 2-core AMD EPYC (AVX-512 BF16, no AMX), calibrated to bench/results/2026-12-01-agents-under-pressure-q4.json:
# 209 tok/s at batch 1 (4.8 ms a step); measured 526 / 546 / 583 tok/s at 8 / 16 / 32 rows (15.2 / 29.3 /
# 55 ms a step); `dense_pass_s` is about a bf16 batch-1 decode step (22 tok/s: 45 ms) and also the fixed
# cost of an extend; `dense_row_s` was fitted so that the no-pressure run of the engine whose q4 decode
# stopped at 8 rows (7992 computed prompt tokens, 2048 generated, decode mostly in passes of 9-32 rows)
# took that run's 22.4 busy seconds; prefill ~950 tok/s. Run on the engine of that real run (commit
# bdc6ea3), it gave busy seconds of 28.6 / 32.1 / 32.8 / 32.7 / 36.5 for retention+program / retention /
# lru / ttl-pins / fcfs against the real 29.9 / 41.1 / 37.3 / 29.1 / 33.5 (the real figures carry
# batch-composition noise), and the same recompute ratio, lru / retention+program, of 1.83x.
AMD_EPYC = CostModel("amd-epyc", q4_min_s=0.0048, q4_row_s=0.00155, dense_pass_s=0.034, dense_row_s=0.0046,
                     extend_pass_s=0.034, prefill_token_s=1 / 950, pair_s=1 / 4e6)
# 2-core Intel Xeon (AVX-512 BF16 and AMX), measured on 2026-12-01: decode steps of 3.2 / 13.7 / 27.8 /
# 42.3 / 57.1 ms at 1 / 8 / 16 / 24 / 32 rows, dense 102 / 118 ms at 48 / 64 rows; extends fitted to the
# per-pass counters of bench/results/2026-12-01-agents-under-pressure-q4-intel.json (retention+program:
# 82 passes, 10,287 tokens, 11.0 s; lru: 53 passes, 19,476 tokens, 12.4 s), attention included.
INTEL_XEON = CostModel("intel-xeon", q4_min_s=0.0032, q4_row_s=0.00173, dense_pass_s=0.054, dense_row_s=0.001,
                       extend_pass_s=0.0825, prefill_token_s=0.000412, pair_s=0.0)
COST_MODELS = {c.cpu: c for c in (AMD_EPYC, INTEL_XEON)}


class SimulatedModel:
    """The model interface without the model: the next token is a fixed function of the last token and
    its position, and each pass costs simulated seconds by a `CostModel` of the real run's engine."""

    def __init__(self, clock: VirtualClock, costs: CostModel = AMD_EPYC) -> None:
        self.cfg, self.dtype, self.device, self.clock = SimulatedConfig(), torch.float32, torch.device("cpu"), clock
        self.costs = costs
        self.busy_s = 0.0  # simulated seconds spent in passes

    def pass_seconds(self, mode: ForwardMode, tokens: int, pairs: float) -> float:
        """Simulated cost of one forward pass computing `tokens` positions over `pairs` attention pairs."""
        c = self.costs
        if mode is ForwardMode.EXTEND:
            compute = c.extend_pass_s + tokens * c.prefill_token_s
        elif tokens <= c.q4_max_rows:
            compute = c.q4_min_s + (tokens - 1) * c.q4_row_s
        else:
            compute = c.dense_pass_s + tokens * c.dense_row_s
        return compute + c.pair_s * pairs

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ctx = current_context()
        rows = ctx.logit_rows
        cost = self.pass_seconds(ctx.mode, ids.numel(), float(positions.sum()))
        self.clock.t += cost
        self.busy_s += cost
        nxt = (ids[rows] * 7919 + positions[rows]) % (self.cfg.vocab_size - 100) + 100
        logits = torch.zeros(len(rows), self.cfg.vocab_size)
        logits[torch.arange(len(rows)), nxt] = 1.0
        return logits


@dataclass
class Agent:
    index: int
    path: list[int]
    step: int = 0
    start: float = 0.0
    end: float | None = None
    outputs: list[list[int]] = field(default_factory=list)


def run_system(model, name: str, workload: Workload, pool: int, ttl_s: float,
               max_running: int = EngineConfig.max_running_requests, concurrency: int | None = None,
               costs: CostModel = AMD_EPYC) -> dict:
    """Drive every agent to its end on one engine; returns the figures of the run. `model` is a loaded
    SmolLM2 (real time) or None (a SimulatedModel of `costs` in simulated time); `max_running` is every
    system's max_running_requests; `concurrency` agents run at a time (default: all), each that ends
    starting the next."""
    cfg = {"max_running_requests": max_running, **SYSTEMS[name]}
    if name == "ttl-pins":
        cfg["trace_ttl_s"] = ttl_s
    if model is None:
        clock = VirtualClock()
        simulated = SimulatedModel(clock, costs)
        engine = Engine(simulated, EngineConfig(kv_cache_tokens=pool, **cfg))
        engine.traces.clock = clock.now
        if engine.kv.retention is not None:
            engine.kv.retention.clock = clock.now
    else:
        clock = RealClock()
        engine = Engine(model.model, EngineConfig(kv_cache_tokens=pool, **cfg), model.eos_token_ids, model.tokenizer)
    if name == "ttl-pins":
        engine.kv.retention.mode = "ttl"
    params = SamplingParams(max_new_tokens=workload.output_tokens, ignore_eos=True)
    agents = [Agent(i, workload.system + task) for i, task in enumerate(workload.tasks)]
    steps = len(workload.observations[0])
    due: list[tuple[float, int]] = []  # (when, agent index): agents whose tool finishes then
    by_rid: dict[str, Agent] = {}
    t0 = clock.now()
    concurrency = concurrency or len(agents)
    for agent in agents[:concurrency]:
        agent.start = t0
        heapq.heappush(due, (t0, agent.index))
    done = 0
    while done < len(agents):
        now = clock.now()
        while due and due[0][0] <= now:
            agent = agents[heapq.heappop(due)[1]]
            req = engine.add_request(agent.path, params, trace_id=f"agent-{agent.index}")
            by_rid[req.rid] = agent
        if not engine.has_work():
            clock.wait_until(due[0][0])
            continue
        passes = engine.stats.forward_passes
        results = engine.step(allow_ghost_only=not due or due[0][0] > clock.now() + 0.005)
        if engine.stats.forward_passes == passes and not results and due:
            clock.wait_until(due[0][0])  # only a ghost pass was left, deferred to ride with the next call
        for result in results:
            if result.error is not None:
                raise RuntimeError(f"{name}: a call failed: {result.error}")
            agent = by_rid.pop(result.rid)
            agent.outputs.append(result.output_ids)
            agent.path = agent.path + result.output_ids + workload.observations[agent.index][agent.step]
            finished_at = clock.now()
            if agent.step + 1 == steps:
                agent.end = finished_at
                engine.end_trace(f"agent-{agent.index}")
                done += 1
                if agent.index + concurrency < len(agents):
                    successor = agents[agent.index + concurrency]
                    successor.start = finished_at
                    heapq.heappush(due, (finished_at, successor.index))
            else:
                heapq.heappush(due, (finished_at + workload.tool_seconds[agent.index][agent.step], agent.index))
            agent.step += 1
    makespan = clock.now() - t0
    busy = simulated.busy_s if model is None else engine.stats.busy_seconds
    while engine.has_work():
        engine.step()
    engine.check_integrity()
    completion = sorted(a.end - a.start for a in agents)
    stats = engine.stats
    traces = stats.traces.values()
    return {
        "system": name,
        "pool": pool,
        "agents": len(agents),
        "makespan_s": makespan,
        "agents_per_s": len(agents) / makespan,
        "mean_completion_s": statistics.fmean(completion),
        "p90_completion_s": completion[min(len(completion) - 1, int(0.9 * len(completion)))],
        "recomputed_prompt_tokens": sum(t.recomputed_tokens for t in traces),
        "computed_prompt_tokens": stats.prompt_tokens - stats.cached_tokens,
        "prompt_tokens": stats.prompt_tokens,
        "hit_rate": stats.hit_rate,
        "evicted_tokens": stats.evicted_tokens,
        "retractions": stats.retractions,
        "calls_run_ahead": stats.calls_run_ahead,
        "busy_s": busy,
        "extend_passes": stats.extend_passes,
        "decode_passes": stats.decode_passes,
        "extend_s": None if model is None else stats.extend_seconds,  # the simulated passes take no real time
        "decode_s": None if model is None else stats.decode_seconds,
        "idle_share": 1 - busy / makespan,
        "pins_released": dict(engine.kv.retention.released) if engine.kv.retention else {},
        "completion_by_agent_s": [a.end - a.start for a in agents],
        "outputs": [a.outputs for a in agents],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--concurrency", type=int, help="agents running at a time (default: all at once)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--system-len", type=int, default=96)
    ap.add_argument("--task-len", type=int, default=48)
    ap.add_argument("--obs-len", type=int, nargs=2, default=(32, 96))
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--tool-seconds", type=float, nargs=2, default=(0.2, 3.0))
    ap.add_argument("--pool-share", type=float, default=1 / 3, help="KV pool / combined working set")
    ap.add_argument("--ttl", type=float, default=3.0, help="the fixed TTL of the ttl-pins system")
    ap.add_argument("--max-running", type=int, default=EngineConfig.max_running_requests,
                    help="max_running_requests of every system (default: the engine's)")
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--skip-no-pressure", action="store_true", help="skip the two runs on a pool that holds everything")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--simulate", action="store_true", help="simulated model and time (see the module docstring)")
    ap.add_argument("--cost-model", default=AMD_EPYC.cpu, choices=list(COST_MODELS),
                    help="the CPU whose measured pass costs the simulation charges")
    ap.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help="the real model's dtype option")
    ap.add_argument("--quantization", default="none", choices=QUANTIZATIONS, help="the real model's decode weights")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = None if args.simulate else load_model("smollm2", dtype=args.dtype, quantization=args.quantization)
    vocab = SimulatedConfig.vocab_size if model is None else model.model.cfg.vocab_size
    workload = make_workload(args.agents, args.steps, args.seed, vocab, args.system_len,
                             args.task_len, tuple(args.obs_len), args.output_tokens, tuple(args.tool_seconds))
    longest = len(workload.system) + max(workload.own_tokens)
    concurrency = min(args.concurrency or args.agents, args.agents)
    costs = COST_MODELS[args.cost_model]
    working_set = workload.working_set(concurrency)
    pool = max(int(working_set * args.pool_share), longest + args.output_tokens)  # one agent always fits
    print(f"{args.agents} agents x {args.steps} steps, {concurrency} at a time; combined working set of "
          f"{concurrency} agents {working_set} tokens; pool {pool} tokens ({args.pool_share:.2f}); "
          f"tools {args.tool_seconds[0]}-{args.tool_seconds[1]} s", file=sys.stderr)
    tags = {"seed": args.seed, "concurrency": concurrency, "cost_model": costs.cpu if args.simulate else None}
    runs = []
    for name in args.systems:
        runs.append(run_system(model, name, workload, pool, args.ttl, args.max_running, concurrency, costs) | tags)
        print(f"  {name}: {runs[-1]['makespan_s']:.1f} s", file=sys.stderr)
    if not args.skip_no_pressure:
        big = 2 * workload.working_set(args.agents)
        for name in ("retention+program", "lru"):
            runs.append(run_system(model, name, workload, big, args.ttl, args.max_running, concurrency, costs)
                        | tags | {"system": f"{name} (no pressure)"})
            print(f"  {runs[-1]['system']}: {runs[-1]['makespan_s']:.1f} s", file=sys.stderr)
    report(runs)
    if args.out:
        args.out.write_text(json.dumps([{k: v for k, v in r.items() if k != "outputs"} for r in runs], indent=2))


def report(runs: list[dict]) -> None:
    cols = ("system", "pool", "recomputed_prompt_tokens", "computed_prompt_tokens", "hit_rate", "agents_per_s",
            "mean_completion_s", "p90_completion_s", "evicted_tokens", "retractions", "calls_run_ahead", "idle_share")
    print(" | ".join(cols) + " | pins released (pressure / idle / budget / ttl)")
    for r in runs:
        released = r["pins_released"]
        pins = " / ".join(str(released.get(k, "-")) for k in ("pressure", "idle", "budget", "ttl"))
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + f" | {pins}")
    by = {r["system"]: r for r in runs}
    reference = runs[0]["outputs"]
    for r in runs[1:]:
        same = sum(a == b for x, y in zip(reference, r["outputs"]) for a, b in zip(x, y))
        total = sum(len(x) for x in reference)
        print(f"outputs of {r['system']} equal to {runs[0]['system']}'s: {same}/{total} calls")
    if {"retention+program", "lru"} <= set(by):
        best, lru = by["retention+program"], by["lru"]
        print(f"recomputed prompt tokens, lru / retention+program: "
              f"{lru['recomputed_prompt_tokens'] / max(best['recomputed_prompt_tokens'], 1):.2f}x (target >= 2)")
        print(f"agents/s, retention+program / lru: {best['agents_per_s'] / lru['agents_per_s']:.2f}x (target >= 1.3)")
    if {"retention+program", "fcfs"} <= set(by):
        print(f"mean completion, fcfs / retention+program: "
              f"{by['fcfs']['mean_completion_s'] / by['retention+program']['mean_completion_s']:.2f}x (target >= 1.3)")
    if {"retention+program (no pressure)", "lru (no pressure)"} <= set(by):
        a, b = by["retention+program (no pressure)"], by["lru (no pressure)"]
        print(f"no pressure: retention+program makespan / lru makespan: {a['makespan_s'] / b['makespan_s']:.3f} "
              f"(target <= 1.02)")


if __name__ == "__main__":
    main()
