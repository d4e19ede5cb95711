"""Multi-agent: DSPy ReAct agents (tools: lookup a town, calculate) answering questions about the
generated towns, all at once, with DSPy's JSONAdapter (tool arguments held to each tool's
parameters by the engine's grammar)."""

from __future__ import annotations

import dspy

from . import Outputs, Workload, prediction_outputs, threads
from .corpus import calculate, lookup, questions

MAX_ITERS = 3


def run(system, n: int) -> Outputs:

    agent = dspy.ReAct("question -> answer", tools=[lookup, calculate], max_iters=MAX_ITERS)
    examples = [dspy.Example(question=q).with_inputs("question") for q in questions(n, "agents")]
    with dspy.context(lm=system.dspy_lm(max_tokens=96), adapter=dspy.JSONAdapter()):
        results = agent.batch(examples, num_threads=threads(system, n), max_errors=n + 1, timeout=0,
                              provide_traceback=False, disable_progress_bar=True)
    return prediction_outputs(results)


WORKLOAD = Workload("multi-agent", f"16 DSPy ReAct agents at once (up to {MAX_ITERS} tool steps each; 8 with --quick)",
                    16, 8, run)
