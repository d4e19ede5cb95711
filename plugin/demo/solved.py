"""Solved questions the demo's agents learn from: few-shot demos of each ReAct step and of the final
answer, built by running the real tools (so every observation is what the tool returns). A 135M model
follows worked examples far better than instructions; the demos are the same in every call, so the
radix cache serves them once for all agents."""

from __future__ import annotations

from typing import Any

from .tools import calculator, search

# (question, [(thought, tool, args)], answer): each solved with one tool call, then finish.
SOLVED = [
    ("How long is the Great Wall of China in kilometres?",
     [("I need to look up the Great Wall of China.", "search", {"query": "great wall"})],
     "21196"),
    ("What is 25 times 48?",
     [("I need to calculate 25 * 48.", "calculator", {"expression": "25 * 48"})],
     "1200"),
    ("How far is the Moon from Earth in km?",
     [("I need to look up the Moon.", "search", {"query": "moon"})],
     "384400"),
]
TOOLS = {"search": search, "calculator": calculator}


FINISH_THOUGHT = "The observation contains the answer, so I finish."


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
        answers.append(dspy.Example(question=question, trajectory=_trajectory(trajectory),
                                    reasoning=f"The observation says {answer}.", answer=answer))
    return steps, answers
