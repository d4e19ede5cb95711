"""A DSPy ReAct agent on the local radixlm engine: a calculator and a search tool over a small
local knowledge base. Prints the trajectory, the answer, per-step cached/prompt tokens (the radix
cache serves each step's shared prefix) and the total time.

    python examples/dspy_react.py ["How tall is the Eiffel Tower in feet?"] [--endpoint ipc://...]
"""

from __future__ import annotations

import argparse
import ast
import operator
import time

import dspy

from radixlm.adapters.dspy import LM, JSONAdapter

KNOWLEDGE = {
    "eiffel tower": "The Eiffel Tower in Paris is 330 metres tall and was completed in 1889.",
    "mount everest": "Mount Everest is 8849 metres high, the highest mountain above sea level.",
    "python": "Python is a programming language created by Guido van Rossum, first released in 1991.",
    "moon": "The Moon is about 384400 km from Earth and takes 27.3 days to orbit it.",
    "metre": "One metre is about 3.281 feet.",
}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Mod: operator.mod}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '330 * 3.281' and return the result."""
    try:
        return str(_eval(ast.parse(str(expression), mode="eval")))
    except Exception as exc:  # the agent sees the error and can try again
        return f"error: {exc}"


def search(query: str) -> str:
    """Look a topic up in the local knowledge base and return the matching facts."""
    q = str(query).lower()
    hits = [fact for key, fact in KNOWLEDGE.items() if key in q or any(w in key for w in q.split() if len(w) > 3)]
    return " ".join(hits) if hits else "no result"


def run(question: str, endpoint: str | None = None, max_iters: int = 4) -> dspy.Prediction:
    lm = LM("smollm2", endpoint, cache=False, max_tokens=160)
    agent = dspy.ReAct("question -> answer", tools=[calculator, search], max_iters=max_iters)
    start = time.perf_counter()
    with dspy.context(lm=lm, adapter=JSONAdapter()):
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
