"""A small generated encyclopedia of invented towns, for the DSPy workloads: passages, a keyword
retriever and the agents' tools (all deterministic, pure Python)."""

from __future__ import annotations

import random
import re

TOWNS = ["Varnholt", "Quellin", "Marrowby", "Tessaly", "Ombrin", "Kestrel Bay", "Dunmere", "Calloway",
         "Brenholm", "Oldcastle", "Fairwick", "Lindqvist", "Peregrine", "Rookhaven", "Saltmere", "Thornby"]
RIVERS = ["Ashwater", "Silverrun", "Greyfen", "Lowbrook", "Tarn", "Whitecap", "Elde", "Rill"]
TRADES = ["salt", "wool", "glass", "timber", "cheese", "copper", "paper", "rope"]


def _facts(town: str) -> dict:
    rng = random.Random(f"corpus-{town}")
    return {"river": rng.choice(RIVERS), "founded": rng.randrange(900, 1700), "population": rng.randrange(2, 90) * 1000,
            "trade": rng.choice(TRADES)}


PASSAGES = {town: (f"{town} is a town on the river {f['river']}, founded in {f['founded']}. It has about "
                   f"{f['population']} inhabitants and is known for its {f['trade']} trade.")
            for town, f in ((t, _facts(t)) for t in TOWNS)}


def retrieve(query: str, k: int = 3) -> list[str]:
    """The k passages sharing the most words with the query (ties in corpus order)."""
    words = set(re.findall(r"\w+", query.lower()))
    ranked = sorted(PASSAGES.values(), key=lambda p: -len(words & set(re.findall(r"\w+", p.lower()))))
    return ranked[:k]


def lookup(town: str) -> str:
    """Return the encyclopedia passage about a town."""
    return PASSAGES.get(town.strip(), f"No passage about {town!r}; known towns: {', '.join(TOWNS)}.")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression of numbers and + - * / ( )."""
    if not re.fullmatch(r"[\d\s+\-*/().]+", expression or ""):
        return "Only numbers and + - * / ( ) are allowed."
    try:
        return str(eval(expression, {"__builtins__": {}}))  # noqa: S307 - digits and operators only
    except (SyntaxError, ZeroDivisionError) as exc:
        return f"Error: {exc}"


def questions(n: int, seed: str) -> list[str]:
    """n questions about the towns (fixed seed)."""
    rng = random.Random(seed)
    forms = ["Which river flows through {a}?", "When was {a} founded?", "What is {a} known for?",
             "How many more inhabitants does {a} have than {b}?", "Which town is older, {a} or {b}?"]
    return [rng.choice(forms).format(a=a, b=b) for a, b in (rng.sample(TOWNS, 2) for _ in range(n))]
