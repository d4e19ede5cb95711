"""A DSPy ReAct agent on the local radixlm engine: a calculator and a search tool over a small
local knowledge base. Prints the trajectory, the answer, per-step cached/prompt tokens (the radix
cache serves each step's shared prefix) and the total time.

    python examples/dspy_react.py ["How tall is the Eiffel Tower in feet?"] [--endpoint ipc://...]
"""

from __future__ import annotations

import argparse
import time

import dspy

from radixlm.adapters.dspy import LM
from radixlm.demo.tools import calculator, search


class Task(dspy.Signature):
    """Answer the question. Look facts up with `search`, do arithmetic with `calculator`, and finish as
    soon as the observations contain the answer."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def run(question: str, endpoint: str | None = None, max_iters: int = 4) -> dspy.Prediction:
    lm = LM("smollm2", endpoint, cache=False, max_tokens=160)
    agent = dspy.ReAct(Task, tools=[calculator, search], max_iters=max_iters)
    start = time.perf_counter()
    with dspy.context(lm=lm):  # DSPy's default adapter; each reply is decoded under its grammar
        pred = agent(question=question)
    elapsed = time.perf_counter() - start

    print("trajectory:")
    for key, value in pred.trajectory.items():
        print(f"  {key}: {value}")
    print(f"answer: {pred.answer}")
    print("per step (cached / prompt tokens):")
    for i, entry in enumerate(lm.history):
        usage = entry["usage"]
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        print(f"  call {i + 1}: {cached} / {usage['prompt_tokens']} prompt tokens cached, "
              f"{usage['completion_tokens']} generated")
    print(f"total time: {elapsed:.2f} s")
    return pred


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default="How tall is the Eiffel Tower in feet?")
    parser.add_argument("--endpoint", default=None, help="engine address (default: attach or spawn)")
    parser.add_argument("--max-iters", type=int, default=4)
    args = parser.parse_args()
    run(args.question, args.endpoint, args.max_iters)
