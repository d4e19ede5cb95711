"""The benchmark suite behind `radixlm bench`: every chosen workload on every chosen system in one
run, then the results as JSON, markdown and a PNG chart (see report.py).

    radixlm bench [--quick] [--workloads mmlu react ...] [--systems lpm hf ...] [--out DIR] [--install-peers]
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
from pathlib import Path

from . import report
from .common import machine_info, warn_if_busy
from .systems import HF, LLAMACPP, Unavailable, install_peers, open_system
from .workloads import registry

SYSTEM_KEYS = {"lpm": "radixlm lpm", "fcfs": "radixlm fcfs", "cache-off": "radixlm cache off", "hf": HF,
               "llama-cpp": LLAMACPP}


def run_workload(system, workload, quick: bool) -> dict:
    """One workload on one open system: its figures (programs/s counts every program; "failed" those
    that ended in an error, e.g. a DSPy reply that did not parse), or {"error": ...} when it raised."""
    n = workload.count(system.sequential, quick)
    system.begin()
    start = time.perf_counter()
    try:
        done = workload.run(system, n)
    except Exception as exc:  # noqa: BLE001 - one failing cell must not end the run; the error is reported
        return {"error": f"{type(exc).__name__}: {exc}"}
    result = system.end(n, time.perf_counter() - start)  # a failed program did its calls too
    result["failed"] = n - done
    return result


def run_suite(workloads: list[str], systems: list[str], quick: bool, model: str = "smollm2", threads: int = 2,
              command: str = "radixlm bench") -> dict:
    """Run the workloads (names from `workloads.registry()`) on the systems (names in systems.ALL)."""
    import torch

    torch.set_num_threads(threads)
    chosen = registry()
    busy = warn_if_busy()
    results: dict[str, dict] = {w: {} for w in workloads}
    for name in systems:
        print(f"{name}:", flush=True)
        try:
            system = open_system(name, model, threads)
        except Unavailable as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a peer that fails to start is reported, the others still run
            reason = f"failed to start: {type(exc).__name__}: {exc}"
        else:
            reason = None
        if reason is not None:
            print(f"  n/a: {reason}", flush=True)
            for w in workloads:
                results[w][name] = {"error": reason}
            continue
        try:
            for w in workloads:
                r = results[w][name] = run_workload(system, chosen[w], quick)
                shown = r.get("error") or (f"{r['programs_per_s']:.3f} programs/s, hit {r['hit_rate']:.0%} "
                                           f"(optimal {r['optimal_hit_rate']:.0%}), {r['wall_s']:.1f} s")
                print(f"  {w}: {shown}", flush=True)
        finally:
            system.close()
            del system
            gc.collect()
    return {"bench": "suite", "time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
            "busy_cores_before": busy,
            "config": {"command": command, "quick": quick, "model": model, "threads": threads, "systems": systems,
                       "workloads": {w: chosen[w].description for w in workloads}},
            "results": results}


def build_parser() -> argparse.ArgumentParser:
    """The `radixlm bench` options."""
    parser = argparse.ArgumentParser(prog="radixlm bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer programs per workload (under 10 minutes here)")
    parser.add_argument("--workloads", nargs="+", choices=list(registry()), default=list(registry()), metavar="W",
                        help=f"workloads to run (default: all): {', '.join(registry())}")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEM_KEYS), default=list(SYSTEM_KEYS), metavar="S",
                        help=f"systems to compare (default: all): {', '.join(SYSTEM_KEYS)}")
    parser.add_argument("--out", type=Path, default=Path("bench/results/suite"),
                        help="folder for suite[_quick].json / .md / .png (default: bench/results/suite)")
    parser.add_argument("--model", default="smollm2", help="embedded model alias (llama-cpp-python needs its GGUF)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of HF and llama-cpp-python")
    parser.add_argument("--install-peers", action="store_true",
                        help="first pip-install the bench extra (llama-cpp-python, built from source; matplotlib)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run the suite for parsed `radixlm bench` arguments; print the table and where the files are."""
    if args.install_peers and install_peers() != 0:
        print("installing the bench extra failed; the systems that need it will say so", file=sys.stderr)
    systems = [SYSTEM_KEYS[s] for s in args.systems]
    command = ("radixlm bench " + shlex.join(sys.argv[2:])).strip() if sys.argv[1:2] == ["bench"] else "radixlm bench"
    data = run_suite(args.workloads, systems, args.quick, args.model, args.threads, command)
    paths = report.write(data, args.out, "suite_quick" if args.quick else "suite")
    print()
    print(paths[1].read_text())
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
