"""The workloads of the SGLang paper, on data generated here (deterministic, nothing downloaded).

Each module defines `WORKLOAD`; `run(system, n)` runs n programs on a system: all at once on
radixlm, one after another on the sequential peers (which run `peer_programs` of them: their rate
per program does not depend on how many there are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Workload:
    """A workload: its name, what it is, how many programs to run (full / quick; for peers) and how."""

    name: str
    description: str
    programs: int
    quick_programs: int
    peer_programs: int
    quick_peer_programs: int
    run: Callable[[Any, int], int]  # (system, n) -> programs that finished without an error

    def count(self, sequential: bool, quick: bool) -> int:
        if sequential:
            return self.quick_peer_programs if quick else self.peer_programs
        return self.quick_programs if quick else self.programs


def threads(system: Any, n: int) -> int:
    """Programs in flight: all of them on radixlm, one at a time on a sequential peer."""
    return 1 if system.sequential else n


def registry() -> dict[str, Workload]:
    """Every workload by name, in report order."""
    from . import chat, dspy_rag, hellaswag, json_extraction, mmlu, multi_agent, react, tree_of_thought

    workloads = [mmlu.WORKLOAD, hellaswag.WORKLOAD, react.WORKLOAD, tree_of_thought.WORKLOAD,
                 json_extraction.WORKLOAD, chat.SHORT, chat.LONG, dspy_rag.WORKLOAD, multi_agent.WORKLOAD]
    return {w.name: w for w in workloads}
