"""The demo's agents: DSPy ReAct agents (DSPy's default adapter, few-shot demos of solved questions)
and a LangChain tool-calling agent, each reporting its steps to the progress board and returning what
it answered, cost and reused."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .progress import Board
from .solved import SOLVED, TOOLS, react_demos
from .tools import calculator, search

INSTRUCTIONS = ("Answer the question. Look facts up with `search`, do arithmetic with `calculator`, and "
                "finish as soon as the observations contain the answer. Never repeat a tool call.")


@dataclass
class AgentRun:
    """One agent's outcome and its LM calls' token counts."""

    name: str
    framework: str
    question: str
    answer: str = ""
    steps: list[str] = field(default_factory=list)
    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    repeated_calls: int = 0
    expected: str = ""


def _recorded(fn: Callable[..., str], run: AgentRun, board: Board) -> Callable[..., str]:
    """`fn` that shows each call on the board and logs it as a step of `run`. A call repeated with
    the same arguments is not run again: the agent gets the earlier result (counted as repeated)."""
    seen: dict[str, str] = {}

    @functools.wraps(fn)
    def tool(*args: Any, **kwargs: Any) -> str:
        shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        board.update(run.name, f"{fn.__name__}({shown})")
        if shown in seen:
            run.repeated_calls += 1
            out = seen[shown]
        else:
            out = seen[shown] = fn(*args, **kwargs)
        run.steps.append(f"{fn.__name__}({shown}) -> {out}")
        return out

    return tool


def run_dspy_agent(lm: Any, name: str, question: str, board: Board, max_iters: int = 3) -> AgentRun:
    """A dspy.ReAct agent on `lm` (a radixlm `dspy.LM`) under DSPy's default adapter, taught by demos
    of solved questions."""
    import dspy
    from dspy.utils.callback import BaseCallback

    run = AgentRun(name, "DSPy", question)

    class Task(dspy.Signature):
        __doc__ = INSTRUCTIONS
        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    class Events(BaseCallback):
        def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            board.update(name, f"thinking (LM call {len(instance.history) + 1})")

        def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
            _count(run, lm.history)
            board.update(name, calls=run.calls, prompt_tokens=run.prompt_tokens, cached_tokens=run.cached_tokens)

    lm = lm.copy(callbacks=[Events()])  # this agent's own history and events, the same engine
    agent = dspy.ReAct(Task, tools=[_recorded(calculator, run, board), _recorded(search, run, board)],
                       max_iters=max_iters)
    agent.react.demos, agent.extract.predict.demos = react_demos()
    start = time.perf_counter()
    try:
        with dspy.context(lm=lm):
            run.answer = str(agent(question=question).answer)
    except Exception as exc:  # one agent's failure is reported, the others go on
        run.error = f"{type(exc).__name__}: {exc}"
    run.seconds = time.perf_counter() - start
    _count(run, lm.history)
    board.update(name, f"answer: {run.answer}" if run.error is None else f"failed: {run.error}", done=True)
    return run


def _count(run: AgentRun, history: list[dict]) -> None:
    usages = [entry.get("usage") or {} for entry in history]
    run.calls = len(history)
    run.prompt_tokens = sum(u.get("prompt_tokens", 0) for u in usages)
    run.completion_tokens = sum(u.get("completion_tokens", 0) for u in usages)
    run.cached_tokens = sum((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0) for u in usages)


def _solved_examples() -> list:
    """The solved questions (solved.py) as chat turns: question, tool call, tool result, answer. The
    answer is written in the reply format the bound tools' prompt asks for ({"answer": ...}, what the
    tool grammar decodes into the reply's text): written as plain text, they never showed the model
    that format after a tool result, and it repeated its call until its forced last step."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from radixlm.adapters.langchain_tools import dumps

    turns: list = []
    for i, (question, calls, answer) in enumerate(SOLVED):
        turns.append(HumanMessage(question))
        for j, (_, tool, args) in enumerate(calls):
            turns += [AIMessage("", tool_calls=[{"name": tool, "args": args, "id": f"solved{i}_{j}"}]),
                      ToolMessage(TOOLS[tool](**args), tool_call_id=f"solved{i}_{j}")]
        turns.append(AIMessage(dumps({"answer": answer})))
    return turns


def run_langchain_agent(endpoint: str, model: str, name: str, question: str, board: Board,
                        max_steps: int = 4) -> AgentRun:
    """A LangChain tool-calling loop (ChatRadixLM.bind_tools, grammar-constrained calls) under one root run;
    its last step must answer (tool_choice="none")."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_core.runnables import RunnableLambda
    from langchain_core.tools import tool

    from radixlm.adapters.langchain import ChatRadixLM

    run = AgentRun(name, "LangChain", question)
    # the lookup first: the 135M model leans to the first tool its prompt lists
    tools = {t.name: t for t in (tool(_recorded(search, run, board)), tool(_recorded(calculator, run, board)))}
    llm = ChatRadixLM(endpoint=endpoint, model=model, max_tokens=64, temperature=0.0)
    act = llm.bind_tools(list(tools.values()), tool_choice="auto")
    answer = llm.bind_tools(list(tools.values()), tool_choice="none")
    messages: list = [SystemMessage(INSTRUCTIONS), *_solved_examples(), HumanMessage(question)]

    def loop(_: object) -> str:
        for step in range(max_steps):
            board.update(name, f"thinking (LM call {step + 1})")
            reply: AIMessage = (act if step < max_steps - 1 else answer).invoke(messages)
            usage = reply.usage_metadata or {}
            run.calls += 1
            run.prompt_tokens += usage.get("input_tokens", 0)
            run.completion_tokens += usage.get("output_tokens", 0)
            run.cached_tokens += (usage.get("input_token_details") or {}).get("cache_read", 0)
            board.update(name, calls=run.calls, prompt_tokens=run.prompt_tokens, cached_tokens=run.cached_tokens)
            messages.append(reply)
            if not reply.tool_calls:
                return str(reply.content)
            for call in reply.tool_calls:
                messages.append(ToolMessage(str(tools[call["name"]].invoke(call["args"])), tool_call_id=call["id"]))
        return "(no answer within the step limit)"

    start = time.perf_counter()
    try:
        run.answer = RunnableLambda(loop).invoke(None)  # one root run: one trace id in the engine
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    run.seconds = time.perf_counter() - start
    board.update(name, f"answer: {run.answer}" if run.error is None else f"failed: {run.error}", done=True)
    return run
