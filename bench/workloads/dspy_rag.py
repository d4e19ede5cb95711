"""A DSPy retrieve-then-answer pipeline: write a search query (LM), retrieve three passages
(keyword retriever), answer from them (LM); JSON outputs under the signature's schema."""

from __future__ import annotations

import dspy

from . import Outputs, Workload, prediction_outputs, threads
from .corpus import questions, retrieve


class RetrieveThenAnswer(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = dspy.Predict("question -> search_query")
        self.answer = dspy.Predict("context: list[str], question -> answer")

    def forward(self, question: str):
        query = self.query(question=question).search_query
        return self.answer(context=retrieve(f"{question} {query}"), question=question)


def run(system, n: int) -> Outputs:

    examples = [dspy.Example(question=q).with_inputs("question") for q in questions(n, "rag")]
    with dspy.context(lm=system.dspy_lm(max_tokens=48), adapter=dspy.JSONAdapter()):
        results = RetrieveThenAnswer().batch(examples, num_threads=threads(system, n), max_errors=n + 1,
                                             provide_traceback=False, disable_progress_bar=True, timeout=0)
    return prediction_outputs(results)


WORKLOAD = Workload("dspy-rag", "DSPy: query -> retrieve 3 passages -> answer", 16, 8, run)
