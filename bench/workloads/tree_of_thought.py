"""Tree-of-thought: fork 3 at every level of a plan (ideas, steps, details), each branch generating
a short line, then join; `bench/fork_programs.py` runs the same program two levels deep."""

from __future__ import annotations

import radixlm as sgl

from . import Outputs, Workload, state_outputs, threads

TOPICS = ["saving water", "learning chess", "growing tomatoes", "writing letters", "cycling in winter",
          "baking bread", "reading faster", "sleeping well", "packing light", "cooking rice"]
EXAMPLES = ("Here are worked examples of careful step-by-step reasoning about everyday plans. "
            "Example: to plan a picnic, first check the weather, then pick a park, then pack food. " * 4)
LEVELS = [(" Idea", "idea"), (" Step", "step"), (" Detail", "detail")]


def _expand(state, depth: int, hint: bool, level: int = 0) -> None:
    """Fork 3 branches at `level`, generate one line in each, expand each branch, then join."""
    if level == depth:
        return
    label, name = LEVELS[level]
    branches = state.fork(3, cache_prefix=hint)
    branches += [f"{label} {i + 1}:" for i in range(3)]
    branches += sgl.gen(name, max_tokens=8, stop="\n")
    for branch in branches:
        _expand(branch, depth, hint, level + 1)
    branches.join()


@sgl.function
def tree_of_thought(s, topic, hint=True, depth=2):
    s += sgl.system("You are a careful planner. " + EXAMPLES)
    s += sgl.user(f"Think about {topic}.")
    s += sgl.assistant_begin()
    _expand(s, depth, hint)
    s += sgl.assistant_end()


def run(system, n: int) -> Outputs:
    args = [{"topic": TOPICS[i % len(TOPICS)] + f" (case {i})", "depth": 3} for i in range(n)]
    return state_outputs(tree_of_thought.run_batch(args, backend=system.backend, num_threads=threads(system, n)))


WORKLOAD = Workload("tree-of-thought", "fork 3, three levels (3 + 9 + 27 branches), join", 8, 2, run)
