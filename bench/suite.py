"""The benchmark suite behind `radixlm bench`: every chosen workload on every chosen system, the same
programs with the same inputs everywhere, workload by workload with each system in its own child process
(every system runs a workload before the next one starts), then one results file
bench/results/<date>-<cpu>[-quick].json (report.py turns it into the README table and chart).

    radixlm bench [--quick] [--workloads mmlu react ...] [--systems lpm hf ...] [--threads N] [--programs N] [--model-speed]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import report
from .agreement import add_agreement
from .common import RESULTS_DIR
from .isolation import Failure, describe_exit, resolve, run_isolated
from .machine import machine, slug
from .runner import OPENER, REGISTRY
from .systems import HF, LLAMACPP, QUANTIZED, install_peers
from .workloads import registry

SYSTEM_KEYS = {"lpm": "radixlm lpm", "fcfs": "radixlm fcfs", "cache-off": "radixlm cache off",
               "int8": "radixlm int8", "q4": QUANTIZED, "hf": HF, "llama-cpp": LLAMACPP}
REFERENCE = "radixlm lpm"  # the system every other one's outputs are compared with
FAILED_TO_START = "failed to start"  # how a row of a system that never started begins


def run_system(system: str, workloads: list[str], quick: bool, model: str, threads: int, timeout_s: float,
               opener: str = OPENER, registry_ref: str = REGISTRY, show: Callable[[str], None] = print,
               programs: int | None = None, on_result: Callable[[str, dict], Any] | None = None) -> dict:
    """Parent side: every workload's result on one system, run in child processes. A child that
    crashes or hangs costs the workload it was running (a row with the reason); the rest run in a
    fresh child. A system that cannot start gets its reason in every row. `on_result(workload,
    result)` is called as each result arrives."""
    results = _Results(on_result)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}  # its engine process too
    while remaining := [w for w in workloads if w not in results]:
        started = crashed = False
        kwargs = {"system": system, "workloads": remaining, "quick": quick, "model": model, "threads": threads,
                  "opener": opener, "registry_ref": registry_ref, "programs": programs}
        for item in run_isolated("radixlm.bench.runner:serve_system", kwargs, timeout_s, env):
            if isinstance(item, Failure):
                if not started:
                    show(f"  n/a: {item.reason}")
                    for w in remaining:
                        results[w] = {"error": f"{FAILED_TO_START}: {item.reason}"}
                    return dict(results)
                current = next((w for w in remaining if w not in results), None)
                if current is None:  # every workload had reported (e.g. a crash in close()): nothing lost
                    show(f"  after its last workload: {item.reason}")
                else:
                    results[current] = {"error": item.reason}
                    crashed = True
                    show(f"  {current}: FAILED: {item.reason}")
            elif item["event"] == "ready":
                started = True
                show(f"  ready in {item['startup_s']:.1f} s")
            else:
                results[item["workload"]] = item["result"]
                show(f"  {item['workload']}: {describe(item['result'])}")
        if not crashed:  # the child exited cleanly: a workload without a result would never get one
            for w in remaining:
                if w not in results:
                    results[w] = {"error": "no result: the system's process ended without running it"}
    return dict(results)


class _Results(dict):
    """A dict of workload results that reports each one as it is stored."""

    def __init__(self, on_result: Callable[[str, dict], Any] | None) -> None:
        super().__init__()
        self.on_result = on_result

    def __setitem__(self, workload: str, result: dict) -> None:
        super().__setitem__(workload, result)
        if self.on_result is not None:
            self.on_result(workload, result)


def describe(result: dict) -> str:
    """One progress line for a workload's result."""
    if "error" in result:
        return f"FAILED: {result['error']}"
    return (f"{result['programs_per_s']:.3f} programs/s, {result['output_tokens_per_s']:.1f} generated tok/s, "
            f"hit {result['hit_rate']:.0%} (optimal {result['optimal_hit_rate']:.0%}), {result['wall_s']:.1f} s")


def run_suite(workloads: list[str], systems: list[str], quick: bool, model: str = "smollm2",
              threads: int | None = None, timeout_s: float = 3600.0, command: str = "radixlm bench",
              opener: str = OPENER, registry_ref: str = REGISTRY, bandwidth: bool = True,
              programs: int | None = None, checkpoint: Callable[[dict], Any] | None = None,
              add_to: dict | None = None) -> dict:
    """Run the workloads on the systems (names in systems.ALL); the whole results file's data.
    `programs`: run that many programs of every workload instead of the mode's counts (smoke runs).
    `checkpoint(data)` is called after every workload with the data so far ("complete" false until
    the end). `add_to`: an earlier run's data to add these systems to; its workloads, mode, model and
    threads are used (the other arguments' values for them are ignored), so the work stays the same."""
    if add_to is not None:
        cfg = add_to["config"]
        workloads, quick, model, threads, programs = (list(cfg["workloads"]), cfg["quick"], cfg["model"],
                                                      cfg["threads"], cfg.get("programs"))
    threads = threads or os.cpu_count() or 1
    chosen = resolve(registry_ref)()
    info = machine(bandwidth)
    print(f"{info['cpu']} ({', '.join(info['key_flags'])}), {info['cores']} cores; {threads} threads for every "
          f"system; load average {info['load_average'][0]:.2f}", flush=True)
    run = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "systems": systems,
           "load_average": info["load_average"]}
    data: dict[str, Any] = add_to if add_to is not None else {
        "bench": "suite", "time": run["time"], "complete": False, "wall_s": 0.0, "machine": info,
        "load_average_after": None,
        "config": {"command": command, "quick": quick, "programs": programs, "model": model, "threads": threads,
                   "systems": [], "reference": REFERENCE, "timeout_s": timeout_s,
                   "workloads": {w: {"description": chosen[w].description,
                                     "programs": programs or chosen[w].count(quick)} for w in workloads}},
        "results": {w: {} for w in workloads}, "runs": []}
    data.setdefault("runs", []).append(run)
    data["config"]["systems"] += [s for s in systems if s not in data["config"]["systems"]]
    wall, earlier = time.perf_counter(), data["wall_s"]

    def stored(name: str) -> Callable[[str, dict], None]:
        def on_result(workload: str, result: dict) -> None:
            data["results"][workload][name] = result
            add_agreement(data["results"], REFERENCE)
            done = all(s in data["results"][w] for w in workloads for s in systems)
            data.update(complete=done, wall_s=earlier + time.perf_counter() - wall,
                        load_average_after=list(os.getloadavg()))
            if checkpoint is not None:
                checkpoint(data)
        return on_result

    # Workload by workload, every system in turn (a fresh process each): the systems' figures of one
    # workload are minutes apart, not the length of the run, on a machine whose speed drifts.
    cannot_start: dict[str, str] = {}
    for workload in workloads:
        print(f"{workload}:", flush=True)
        for name in systems:
            if name in cannot_start:
                stored(name)(workload, {"error": cannot_start[name]})
                continue
            result = run_system(name, [workload], quick, model, threads, timeout_s, opener, registry_ref,
                                show=lambda line, name=name: print(f"  {name}: {line.strip()}", flush=True),
                                programs=programs, on_result=stored(name))[workload]
            if result.get("error", "").startswith(FAILED_TO_START):
                cannot_start[name] = result["error"]
    return data


def run_model_speed(quick: bool, timeout_s: float) -> dict:
    """bench/model_speed.py (batch-1 decode and prefill against this CPU's limits) in its own process:
    the results file it writes, or {"error": ...}."""
    script = Path(__file__).resolve().parent / "model_speed.py"
    saved = RESULTS_DIR / ("model_speed_quick.json" if quick else "model_speed.json")
    saved.unlink(missing_ok=True)
    try:
        done = subprocess.run([sys.executable, str(script), *(["--quick"] if quick else [])], timeout=timeout_s,
                              stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0 or not saved.exists():
        return {"error": describe_exit(done.returncode, done.stderr) if done.returncode else f"{saved} not written"}
    return json.loads(saved.read_text())


def results_path(data: dict, folder: Path = RESULTS_DIR) -> Path:
    """bench/results/<date>-<cpu>[-quick].json for a run's data."""
    mode = "-smoke" if data["config"].get("programs") else ("-quick" if data["config"]["quick"] else "")
    stem = f"{data['time'][:10]}-{slug(data['machine']['cpu'])}{mode}"
    return folder / f"{stem}.json"


def save(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The `radixlm bench` options."""
    parser = argparse.ArgumentParser(prog="radixlm bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer programs per workload, for every system")
    parser.add_argument("--workloads", nargs="+", choices=list(registry()), default=list(registry()), metavar="W",
                        help=f"workloads to run (default: all): {', '.join(registry())}")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEM_KEYS), default=list(SYSTEM_KEYS), metavar="S",
                        help=f"systems to compare (default: all): {', '.join(SYSTEM_KEYS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: bench/results/<date>-<cpu>[-quick].json)")
    parser.add_argument("--model", default="smollm2", help="embedded model alias (llama-cpp-python needs its GGUF)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help=f"CPU threads of every system (default: all cores, {os.cpu_count()} here)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds a system may run one workload before it is killed and marked failed")
    parser.add_argument("--programs", type=int, default=None,
                        help="run this many programs of every workload on every system (a smoke run; its file is "
                             "named -smoke)")
    parser.add_argument("--add-to", type=Path, default=None, metavar="FILE",
                        help="add the systems to an earlier results file (same workloads, mode and threads)")
    parser.add_argument("--model-speed", action="store_true",
                        help="also run bench/model_speed.py (batch-1 decode, prefill) and keep its figures in the file")
    parser.add_argument("--install-peers", action="store_true",
                        help="first pip-install the bench extra (llama-cpp-python; matplotlib)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run the suite for parsed `radixlm bench` arguments; print the table and where the file is."""
    if args.install_peers and install_peers() != 0:
        print("installing the bench extra failed; the systems that need it will say so", file=sys.stderr)
    systems = [SYSTEM_KEYS[s] for s in args.systems]
    command = ("radixlm bench " + shlex.join(sys.argv[2:])).strip() if sys.argv[1:2] == ["bench"] else "radixlm bench"
    # A terminated run still kills its systems' processes (isolation.run_isolated cleans up on exit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    paths: list[Path] = [args.add_to] if args.add_to else []
    add_to = json.loads(args.add_to.read_text()) if args.add_to else None

    def checkpoint(data: dict) -> None:  # a run cut short still leaves the workloads it finished
        paths[:] = paths or [args.out or results_path(data)]
        save(data, paths[0])

    data = run_suite(args.workloads, systems, args.quick, args.model, args.threads, args.timeout, command,
                     programs=args.programs, checkpoint=checkpoint, add_to=add_to)
    if args.model_speed:
        print("model speed (bench/model_speed.py):", flush=True)
        data["model_speed"] = run_model_speed(args.quick, args.timeout)
    path = save(data, paths[0])
    print()
    print(report.markdown(data))
    print(f"wrote {path}; `python -m radixlm.bench.report {path} --readme README.md --chart docs/bench_suite.png` "
          "puts its table and chart into the README")
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
