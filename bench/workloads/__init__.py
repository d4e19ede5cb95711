"""The workloads of the SGLang paper, on data generated here (deterministic, nothing downloaded).

Each module defines `WORKLOAD`; `run(system, n)` runs the same n programs with the same inputs on
every system (all at once on radixlm, one after another on the sequential peers) and returns each
program's outputs, in program order, so the suite can check that the systems did the same work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

Outputs = list[Optional[dict]]  # per program: its outputs as JSON-able data, None where it ended in an error


@dataclass(frozen=True)
class Workload:
    """A workload: its name, what it is, how many programs every system runs (full / quick) and how."""

    name: str
    description: str
    programs: int
    quick_programs: int
    run: Callable[[Any, int], Outputs]  # (system, n) -> the n programs' outputs

    def count(self, quick: bool) -> int:
        return self.quick_programs if quick else self.programs


def threads(system: Any, n: int) -> int:
    """Programs in flight: all of them on radixlm, one at a time on a sequential peer."""
    return 1 if system.sequential else n


def state_outputs(states: list) -> Outputs:
    """The outputs of finished program-language states: every variable (gen text, select choice)."""
    return [jsonable(state.variables()) for state in states]


def prediction_outputs(predictions: list) -> Outputs:
    """The outputs of a DSPy `batch`: each Prediction's fields (None for a program that failed)."""
    return [None if p is None else jsonable(p.toDict()) for p in predictions]


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data (anything else as its str), so outputs compare across processes."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def registry() -> dict[str, Workload]:
    """Every workload by name, in report order."""
    from . import chat, dspy_rag, hellaswag, json_extraction, mmlu, multi_agent, react, tree_of_thought

    workloads = [mmlu.WORKLOAD, hellaswag.WORKLOAD, react.WORKLOAD, tree_of_thought.WORKLOAD,
                 json_extraction.WORKLOAD, chat.SHORT, chat.LONG, dspy_rag.WORKLOAD, multi_agent.WORKLOAD,
                 multi_agent.SEQUENTIAL]
    return {w.name: w for w in workloads}
