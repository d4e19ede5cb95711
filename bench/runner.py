"""The child-process side of the suite: open one system and run workloads on it, emitting each
workload's result as it ends (see isolation.py). Imports nothing heavy itself, so a system that
cannot be imported fails in `open_system`, inside the child."""

from __future__ import annotations

import time
from typing import Callable

from .agreement import digest
from .isolation import resolve

OPENER = "radixlm.bench.systems:open_system"
REGISTRY = "radixlm.bench.workloads:registry"


def run_workload(system, workload, quick: bool, programs: int | None = None) -> dict:
    """One workload on one open system (`programs` of it, default its count for the mode): its
    figures, its programs' outputs and their digest ("failed": programs that ended in an error, e.g.
    a DSPy reply that did not parse), or {"error": ...} when the workload itself raised."""
    n = programs or workload.count(quick)
    system.begin()
    start = time.perf_counter()
    try:
        outputs = workload.run(system, n)
    except Exception as exc:  # noqa: BLE001 - one failing cell must not end the run; the error is reported
        return {"error": f"{type(exc).__name__}: {exc}"}
    result = system.end(n, time.perf_counter() - start)  # a failed program did its calls too
    result.update(failed=sum(o is None for o in outputs), outputs=outputs, outputs_digest=digest(outputs))
    return result


def serve_system(system: str, workloads: list[str], quick: bool, model: str, threads: int, emit: Callable,
                 opener: str = OPENER, registry_ref: str = REGISTRY, programs: int | None = None) -> None:
    """Open `system` with `opener(name, model, threads)`, run the named workloads of
    `registry_ref()` on it, and emit {"event": "ready"} then one {"event": "result"} per workload."""
    chosen = resolve(registry_ref)()
    start = time.perf_counter()
    opened = resolve(opener)(system, model, threads)
    emit({"event": "ready", "startup_s": time.perf_counter() - start})
    try:
        for w in workloads:
            emit({"event": "result", "workload": w, "result": run_workload(opened, chosen[w], quick, programs)})
    finally:
        opened.close()
