"""Stand-ins for the suite's child processes (tests/test_bench.py): systems and workloads without a
model, including a peer that segfaults on start, one that segfaults in one workload, one that hangs,
one that segfaults on close after its last workload, and one whose import fails. Imported by name in
the children (tests/ is put on PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time

from radixlm.bench.calls import CallLog
from radixlm.bench.workloads import Workload

SPEEDS = {"radixlm lpm": 10.0, "radixlm fcfs": 8.0, "HF transformers": 1.0, "llama-cpp-python": 4.0}


class FakeSystem:
    """A system whose wall time is programs / speed; `name` decides how it misbehaves."""

    def __init__(self, name: str) -> None:
        self.name, self.sequential, self.log = name, not name.startswith("radixlm"), CallLog()

    def begin(self) -> None:
        self.log.clear()

    def end(self, programs: int, wall_s: float) -> dict:
        return self.log.summary(programs, programs / SPEEDS.get(self.name, 2.0))

    def close(self) -> None:
        if self.name == "segfaults on close":
            os.kill(os.getpid(), signal.SIGSEGV)


def open_system(name: str, model: str, threads: int) -> FakeSystem:
    if name == "segfaults on start":
        os.kill(os.getpid(), signal.SIGSEGV)
    if name == "cannot import":
        import a_peer_library_that_is_not_installed  # noqa: F401
    return FakeSystem(name)


def _answers(system: FakeSystem, n: int) -> list:
    """Program i answers "a{i}" in 2 tokens; "disagreeing peer" answers its odd programs otherwise, in 3."""
    outputs = []
    for i in range(n):
        differs = system.name == "disagreeing peer" and i % 2
        out = [9, 9, 9] if differs else [9, 9]
        system.log.add("gen", [1, 2, 3, i], out, 3 if (i and not system.sequential) else 0, 0.1)
        outputs.append({"answer": f"b{i}" if differs else f"a{i}"})
    return outputs


def _crash_some(system: FakeSystem, n: int) -> list:
    if system.name == "segfaults in a workload":
        os.kill(os.getpid(), signal.SIGSEGV)
    if system.name == "hangs in a workload":
        time.sleep(600)
    return _answers(system, n)


def _raises(system: FakeSystem, n: int) -> list:
    raise RuntimeError("boom")


def _one_fails(system: FakeSystem, n: int) -> list:
    return [None] + _answers(system, n)[1:]


def registry() -> dict[str, Workload]:
    workloads = [Workload("fake", "stand-in", 4, 2, _answers), Workload("crashy", "crashes some systems", 4, 2, _crash_some),
                 Workload("raises", "always raises", 1, 1, _raises), Workload("one-fails", "program 0 fails", 3, 3, _one_fails)]
    return {w.name: w for w in workloads}


def emit_pid_then_hang(emit) -> None:
    """An isolated target that says who it is, then never finishes."""
    emit({"pid": os.getpid()})
    time.sleep(600)
