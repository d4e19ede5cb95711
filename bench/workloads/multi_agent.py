"""Multi-agent: DSPy ReAct agents (tools: lookup a town, calculate) answering questions about the
generated towns, all at once, with DSPy's JSONAdapter (tool arguments held to each tool's
parameters by the engine's grammar)."""

from __future__ import annotations

import dspy

from . import Outputs, Workload, prediction_outputs, threads
from .corpus import calculate, lookup, questions

MAX_ITERS = 3


def agents(system, n: int, in_flight: int) -> Outputs:
    """n ReAct agents, `in_flight` of them at a time."""
    agent = dspy.ReAct("question -> answer", tools=[lookup, calculate], max_iters=MAX_ITERS)
    examples = [dspy.Example(question=q).with_inputs("question") for q in questions(n, "agents")]
    with dspy.context(lm=system.dspy_lm(max_tokens=96), adapter=dspy.JSONAdapter()):
        results = agent.batch(examples, num_threads=in_flight, max_errors=n + 1, timeout=0,
                              provide_traceback=False, disable_progress_bar=True)
    return prediction_outputs(results)


def run(system, n: int) -> Outputs:
    return agents(system, n, threads(system, n))


def run_sequential(system, n: int) -> Outputs:
    return agents(system, n, 1)


WORKLOAD = Workload("multi-agent", f"16 DSPy ReAct agents at once (up to {MAX_ITERS} tool steps each; 8 with --quick)",
                    16, 8, run)
SEQUENTIAL = Workload("agent-sequential", f"8 DSPy ReAct agents one after another on every system: one agent at a "
                      f"time, batch-1 decode (up to {MAX_ITERS} tool steps each; 3 with --quick)", 8, 3, run_sequential)
