"""Solved questions the demo's agents learn from: few-shot demos of each ReAct step and of the final
answer, built by running the real tools (so every observation is what the tool returns). A 135M model
follows worked examples far better than instructions; the demos are the same in every call, so the
radix cache serves them once for all agents.

What the 135M model needs from them (each measured on `radixlm demo`): questions of the demo's forms
with other facts (it copies the nearest worked example, so an example's own answer must never be a
demo question's); numbered thoughts ("Step 1: ...", then "Step 2: ... so I finish"), which tell a first
step from the step after an observation (unnumbered, it repeated its first call until max_iters);
and final answers copied from the example's own observation, after a reasoning that points at
observation_0 (a bare number as the answer made it copy a worked example's number instead)."""

from __future__ import annotations

from typing import Any

from .tools import calculator, search

# (question, [(thought, tool, args)], answer): each solved with one tool call, then finish; the
# lookups and the calculations alternate (the order matters to the model: the last example weighs
# most). `answer` is the short answer the LangChain agent's chat turns give; the DSPy answer demos
# give the observation itself.
SOLVED = [
    ("How tall is the Statue of Liberty in metres?",
     [("Step 1: I need to look up the Statue of Liberty.", "search", {"query": "statue of liberty"})],
     "93"),
    ("What is 2345 times 6789?",
     [("Step 1: I need to calculate 2345 * 6789.", "calculator", {"expression": "2345 * 6789"})],
     "15920205"),
    ("In which year was Java first released?",
     [("Step 1: I need to look up Java.", "search", {"query": "java"})],
     "1995"),
    ("What is 12.5 times 36?",
     [("Step 1: I need to calculate 12.5 * 36.", "calculator", {"expression": "12.5 * 36"})],
     "450"),
    ("How high is Mount Fuji in metres?",
     [("Step 1: I need to look up Mount Fuji.", "search", {"query": "mount fuji"})],
     "3776"),
]
TOOLS = {"search": search, "calculator": calculator}


FINISH_THOUGHT = "Step 2: The observation answers the question, so I finish."


def _trajectory(trajectory: dict[str, Any]) -> str:
    """A trajectory as dspy.ReAct shows it to the model under DSPy's default (Chat) adapter."""
    import dspy

    return dspy.ChatAdapter().format_user_message_content(dspy.Signature(f"{', '.join(trajectory)} -> x"), trajectory)


def react_demos() -> tuple[list, list]:
    """Demos for a ReAct agent's step predictor (every step of every solved question) and for its
    extract predictor (the answer from the full trajectory)."""
    import dspy

    steps, answers = [], []
    for question, calls, answer in SOLVED:
        trajectory: dict[str, Any] = {}
        for i, (thought, tool, args) in enumerate([*calls, (FINISH_THOUGHT, "finish", {})]):
            steps.append(dspy.Example(question=question, trajectory=_trajectory(trajectory),
                                      next_thought=thought, next_tool_name=tool, next_tool_args=args))
            trajectory.update({f"thought_{i}": thought, f"tool_name_{i}": tool, f"tool_args_{i}": args,
                               f"observation_{i}": TOOLS[tool](**args) if tool in TOOLS else "Completed."})
        found = trajectory[f"observation_{len(calls) - 1}"]  # the last tool's result holds the answer
        answers.append(dspy.Example(question=question, trajectory=_trajectory(trajectory),
                                    reasoning=f"The answer is in observation_0: {found}", answer=found))
    return steps, answers
