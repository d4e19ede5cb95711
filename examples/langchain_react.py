"""A tool-calling ReAct agent on the local engine: the model calls a calculator and a local knowledge-base
search until it answers, first as a loop written with langchain-core alone, then as the same agent built
by `langchain.agents.create_agent` (when the `langchain` extra is installed). Tool calls are generated
under a grammar, so they always parse; every step reuses the KV of the steps before it.

    python examples/langchain_react.py "How tall is the Eiffel Tower in feet?"
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from typing import Callable

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from radixlm.adapters.langchain import ChatRadixLM
from radixlm.demo import tools as demo_tools

# The demo's tools (a safe calculator, a local knowledge-base search) as LangChain tools.
calculator, search = tool(demo_tools.calculator), tool(demo_tools.search)


TOOLS = {t.name: t for t in (calculator, search)}
SYSTEM = "Answer the question. Use search to look facts up and calculator for arithmetic. One metre is 3.281 feet."


def _worked_example() -> list[BaseMessage]:
    """One solved question as chat turns: a 135M model copies a pattern far better than it follows rules."""
    def call(i: int, name: str, args: dict) -> AIMessage:
        return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"example{i}"}])

    return [HumanMessage("How high is Mount Everest in feet?"),
            call(1, "search", {"query": "mount everest"}),
            ToolMessage(search.invoke("mount everest"), tool_call_id="example1"),
            call(2, "calculator", {"expression": "8849 * 3.281"}),
            ToolMessage(calculator.invoke("8849 * 3.281"), tool_call_id="example2"),
            AIMessage("Mount Everest is about 29034 feet high.")]


EXAMPLE = _worked_example()


def react_core(llm: ChatRadixLM, question: str, max_steps: int = 5) -> list[BaseMessage]:
    """The ReAct loop with langchain-core alone: the model sees the tools and the conversation, the tools
    it calls run and their results go back, until it answers; its last step must answer
    (tool_choice="none"). Returns the messages after the question."""
    tools = list(TOOLS.values())
    act, answer = llm.bind_tools(tools, tool_choice="auto"), llm.bind_tools(tools, tool_choice="none")
    messages: list[BaseMessage] = [SystemMessage(SYSTEM), *EXAMPLE, HumanMessage(question)]

    def loop(_: object) -> list[BaseMessage]:
        # One root run: every model call of the loop shares its trace id in the engine's stats.
        for step in range(max_steps):
            reply = (act if step < max_steps - 1 else answer).invoke(messages)
            messages.append(reply)
            if not reply.tool_calls:
                break
            messages.extend(TOOLS[call["name"]].invoke(call) for call in reply.tool_calls)  # ToolMessages
        return messages[len(EXAMPLE) + 2:]

    return RunnableLambda(loop).invoke(None)


def react_agent(llm: ChatRadixLM, question: str, max_steps: int = 5) -> list[BaseMessage]:
    """The same agent through `langchain.agents.create_agent`; a middleware makes its last model call
    answer (tool_choice="none"). Returns the messages after the question."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call

    example_steps = sum(isinstance(m, AIMessage) for m in EXAMPLE)

    @wrap_model_call
    def answer_at_last_step(request, handler):  # noqa: ANN001, ANN202
        steps = sum(isinstance(m, AIMessage) for m in request.messages) - example_steps
        return handler(request.override(tool_choice="none") if steps >= max_steps - 1 else request)

    agent = create_agent(llm, list(TOOLS.values()), system_prompt=SYSTEM, middleware=[answer_at_last_step])
    state = agent.invoke({"messages": [*EXAMPLE, HumanMessage(question)]})
    return state["messages"][len(EXAMPLE) + 1:]


def cache_reuse(messages: list[BaseMessage]) -> list[float]:
    """Per model step: the fraction of its prompt tokens served from the engine's prefix cache."""
    return [m.usage_metadata["input_token_details"]["cache_read"] / m.usage_metadata["input_tokens"]
            for m in messages if isinstance(m, AIMessage)]


def show(title: str, messages: list[BaseMessage], seconds: float) -> None:
    """Print the steps (tool calls, results, cache reuse) and the answer of one run."""
    print(f"== {title}")
    reuse = iter(cache_reuse(messages))
    steps = 0
    for m in messages:
        if isinstance(m, AIMessage):
            u = m.usage_metadata
            did = "; ".join(f"{c['name']}({json.dumps(c['args'])})" for c in m.tool_calls) or "answer"
            print(f"step {steps}: {did}  [prompt {u['input_tokens']} tokens, "
                  f"{u['input_token_details']['cache_read']} cached = {next(reuse):.0%}]")
            steps += 1
        elif isinstance(m, ToolMessage):
            print(f"        -> {m.content}")
    later = [m.usage_metadata for m in messages if isinstance(m, AIMessage)][1:]
    cached, prompt = (sum(u["input_token_details"]["cache_read"] for u in later), sum(u["input_tokens"] for u in later))
    print(f"answer: {messages[-1].content!r}")
    print(f"{steps} steps in {seconds:.1f} s; steps after the first found {cached} of {prompt} prompt tokens cached"
          f" ({cached / max(prompt, 1):.0%})\n")


def main() -> None:
    question = " ".join(sys.argv[1:]) or "How tall is the Eiffel Tower in feet?"
    llm = ChatRadixLM(model="smollm2", max_tokens=64)
    runs: list[tuple[str, Callable]] = [("langchain-core ReAct loop", react_core)]
    if importlib.util.find_spec("langchain") is not None:
        runs.append(("langchain.agents.create_agent", react_agent))
    else:
        print("(langchain is not installed: pip install 'radixlm[langchain]' for the create_agent run)\n")
    for title, run in runs:
        start = time.perf_counter()
        messages = run(llm, question)
        show(title, messages, time.perf_counter() - start)


if __name__ == "__main__":
    main()
