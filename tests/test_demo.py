"""The main job (`radixlm demo`), its tools and progress board, and the DSPy ReAct example."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from radixlm.demo.agents import INSTRUCTIONS
from radixlm.demo.main import DSPY_QUESTIONS, LANGCHAIN_QUESTION, is_right
from radixlm.demo.progress import Board
from radixlm.demo.solved import SOLVED, react_demos
from radixlm.demo.tools import KNOWLEDGE, calculator, search

ROOT = Path(__file__).resolve().parents[1]


def test_calculator_evaluates_arithmetic_and_reports_errors():
    assert calculator("330 * 3.281") == "1082.73"
    assert calculator("-(2 + 3) ** 2 % 7") == str(-(2 + 3) ** 2 % 7) and calculator("1 / 3") == "0.3333333333"
    assert calculator("__import__('os')").startswith("error: unsupported expression element Call")
    assert calculator("2 ** 1000").startswith("error: exponent too large")
    assert calculator("1 +").startswith("error:")


def test_search_takes_a_topic_of_the_knowledge_base_and_its_schema_is_that_closed_set():
    import dspy
    from langchain_core.tools import tool

    assert "330 metres" in search("eiffel tower") and "1991" in search("python")
    with pytest.raises(ValueError, match="unknown topic 'zebra'"):
        search("zebra")
    # DSPy and LangChain both turn the Literal into an enum: a grammar-constrained call names a real topic
    assert dspy.Tool(search).args["query"]["enum"] == list(KNOWLEDGE)
    assert tool(search).args["query"]["enum"] == list(KNOWLEDGE)


def test_the_react_step_grammar_allows_only_the_knowledge_base_topics():
    import dspy

    from radixlm.adapters.dspy_grammar import chat_grammar

    agent = dspy.ReAct("question -> answer", tools=[calculator, search])
    grammar = chat_grammar(agent.react.signature, agent.tools, 256)
    branch = next(line for line in grammar.splitlines() if line.startswith("tool_step:"))
    assert '"enum": ["eiffel tower", "mount everest"' in branch and branch.count('"enum"') == 1


def _demo_text() -> str:
    """All the text of the solved examples as the agents read it: DSPy's rendered step and answer demos."""
    steps, answers = react_demos()
    return " ".join(str(dict(demo)) for demo in [*steps, *answers])


def test_every_question_needs_a_tool_and_the_demos_solve_other_questions():
    solved = {q for q, _, _ in SOLVED}
    # what the model reads besides the tools' results: the answer must come from a tool call
    prompt_text = " ".join([INSTRUCTIONS, calculator.__doc__, search.__doc__, repr(SOLVED), _demo_text()])
    for question, expected in [*DSPY_QUESTIONS, LANGCHAIN_QUESTION]:
        assert question not in solved and expected not in question  # the answer is not in the question
        assert expected not in prompt_text, expected
    assert is_right("It is 7,006,652.", "7006652") and not is_right("about 7 million", "7006652")


def test_the_leak_check_sees_the_rendered_demos(monkeypatch):
    """The check above can fail: a solved question that looks up a demo question's fact leaks it."""
    from radixlm.demo import solved

    monkeypatch.setattr(solved, "SOLVED", [*SOLVED, ("Where is the Eiffel Tower?", [
        ("Step 1: I need to look up the Eiffel Tower.", "search", {"query": "eiffel tower"})], "Paris")])
    assert "330" in _demo_text()


def test_react_demos_show_each_step_with_the_real_tool_results():
    steps, answers = react_demos()
    assert len(steps) == sum(len(calls) + 1 for _, calls, _ in SOLVED) and len(answers) == len(SOLVED)
    first, finish = steps[0], steps[1]
    assert (first.next_tool_name, first.next_tool_args) == ("search", {"query": "statue of liberty"})
    assert first.next_thought.startswith("Step 1: ") and finish.next_thought.startswith("Step 2: ")
    assert finish.next_tool_name == "finish" and "93 metres" in finish.trajectory
    assert finish.next_tool_args == {}
    # each answer is read off its own observation
    assert "[[ ## observation_0 ## ]]" in answers[0].trajectory and answers[0].answer == search("statue of liberty")
    assert answers[1].answer == calculator("2345 * 6789") == SOLVED[1][2]


def test_langchain_solved_turns_answer_in_the_tool_reply_format():
    from langchain_core.messages import AIMessage

    from radixlm.adapters.langchain_tools import parse_reply
    from radixlm.demo.agents import _solved_examples

    answers = [m for m in _solved_examples() if isinstance(m, AIMessage) and not m.tool_calls]
    assert [parse_reply(m.content)[0] for m in answers] == [answer for _, _, answer in SOLVED]


def test_board_without_a_terminal_prints_one_line_per_status_change():
    out = io.StringIO()
    with Board([("a", "DSPy"), ("b", "LangChain")], out=out) as board:
        board.update("a", "thinking")
        board.update("b", calls=2, prompt_tokens=100, cached_tokens=80)  # counters only: no line
        board.update("b", "answer: 42", done=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("a          thinking") and "answer: 42" in lines[1]
    assert board.rows["b"].done and not board.rows["a"].done and board.rows["b"].cached_tokens == 80


def _run(args: list[str], timeout: int) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_demo_runs_dspy_and_langchain_agents_at_once_and_reports_reuse():
    out = _run([sys.executable, "-m", "radixlm.cli", "demo", "--agents", "2"], timeout=600)
    rows = re.findall(r"^  (\S+)\s+(DSPy|LangChain)\s+(\d+) calls, (\d+)/(\d+) prompt tokens", out, re.M)
    assert [r[0] for r in rows] == ["dspy-1", "dspy-2", "langchain"], out
    assert all(int(calls) >= 1 and int(prompt) > 0 for _, _, calls, _, prompt in rows)
    # the DSPy agents share their signature's prompt: later calls are served mostly from the cache
    assert any(int(cached) > 0.5 * int(prompt) for _, fw, _, cached, prompt in rows if fw == "DSPy"), out
    assert "3 agents ran at once" in out and "prefix reuse:" in out and "3 agent traces" in out
    # the summary shows each answer and whether it is right
    assert len(re.findall(r"^             A: .*\((right|wrong, expected \d+)\)$", out, re.M)) == 3, out
    # measured 3 of 3 (README); one flip is tolerated on other CPUs' numerics
    assert re.search(r"answers: [23] of 3 right", out), out


@pytest.mark.slow
def test_dspy_react_example_prints_trajectory_and_per_step_reuse(tmp_path):
    endpoint = f"ipc://{tmp_path / 'engine.sock'}"
    out = _run([sys.executable, "examples/dspy_react.py", "--max-iters", "2", "--endpoint", endpoint], timeout=600)
    assert "trajectory:" in out and "answer:" in out and "total time:" in out
    steps = [tuple(map(int, m)) for m in re.findall(r"call \d+: (\d+) / (\d+) prompt tokens cached", out)]
    assert 2 <= len(steps) <= 3  # ReAct steps, then the extract call
    assert all(cached >= 0.8 * prompt for cached, prompt in steps[1:-1]), steps  # the spawned engine exits with it
