"""The demo agents' tools: a safe calculator and a search over a small local knowledge base whose
topics are a closed set (the search parameter is a Literal of them, so the tool's JSON schema is an
enum and a grammar-constrained call can only name a real topic)."""

from __future__ import annotations

import ast
import operator
from typing import Literal

KNOWLEDGE = {
    "eiffel tower": "The Eiffel Tower in Paris is 330 metres tall and was completed in 1889.",
    "mount everest": "Mount Everest is 8849 metres high, the highest mountain above sea level.",
    "python": "Python is a programming language created by Guido van Rossum, first released in 1991.",
    "moon": "The Moon is about 384400 km from Earth and takes 27.3 days to orbit it.",
    "metre": "One metre is about 3.281 feet.",
    "light": "Light travels about 299792 km per second in a vacuum.",
    "great wall": "The Great Wall of China is about 21196 kilometres long.",
    "kilometre": "One kilometre is about 0.621 miles.",
    "statue of liberty": "The Statue of Liberty in New York is 93 metres tall and was dedicated in 1886.",
    "java": "Java is a programming language created at Sun Microsystems, first released in 1995.",
    "mount fuji": "Mount Fuji is 3776 metres high, the highest mountain in Japan.",
}
Topic = Literal[tuple(KNOWLEDGE)]  # type: ignore[valid-type]  # the knowledge base's topics

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Mod: operator.mod}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        if isinstance(node.op, ast.Pow) and abs(_eval(node.right)) > 64:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 * 34' and return the result."""
    try:
        return f"{_eval(ast.parse(str(expression), mode='eval')):.10g}"
    except Exception as exc:  # the agent sees the error and can try again
        return f"error: {exc}"


def search(query: Topic) -> str:
    """Look a topic up in the local knowledge base and return its facts."""
    if query not in KNOWLEDGE:
        raise ValueError(f"unknown topic {query!r}: the topics are {', '.join(KNOWLEDGE)}")
    return KNOWLEDGE[query]
