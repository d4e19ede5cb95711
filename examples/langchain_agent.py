"""A `langchain.agents.create_agent` agent with three tools on the local engine, streamed as it works:
it looks a fact up, looks a conversion factor up, multiplies, and answers. The model's tool calls
stream as `tool_call_chunks` while they decode (under a grammar, so they always parse), and every
step reuses the KV of the steps before it (the engine's prefix cache).

    pip install "radixlm[langchain]"
    python examples/langchain_agent.py "How long is the Great Wall of China in miles?"
"""

from __future__ import annotations

import sys
import time

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from radixlm.adapters.langchain import ChatRadixLM
from radixlm.demo import tools as demo_tools

FACTS = {"eiffel tower": "The Eiffel Tower is 330 metres tall.",
         "mount everest": "Mount Everest is 8849 metres high.",
         "great wall": "The Great Wall of China is 21196 kilometres long.",
         "moon": "The Moon is 384400 kilometres from Earth."}
FACTORS = {("metres", "feet"): 3.281, ("kilometres", "miles"): 0.621, ("metres", "miles"): 0.000621,
           ("kilometres", "feet"): 3281.0}


@tool
def search(topic: str) -> str:
    """Look a landmark or place up and return what is known about its size or distance."""
    topic = topic.lower()
    return next((fact for key, fact in FACTS.items() if key in topic or topic in key), "no result")


@tool
def unit_factor(from_unit: str, to_unit: str) -> str:
    """The number to multiply a value in `from_unit` by to get it in `to_unit` (e.g. metres to feet)."""
    factor = FACTORS.get((from_unit.lower().strip(), to_unit.lower().strip()))
    return str(factor) if factor is not None else f"unknown conversion from {from_unit} to {to_unit}"


calculator = tool(demo_tools.calculator)
TOOLS = [search, unit_factor, calculator]
SYSTEM = ("Answer the question with the tools: search for the fact, ask unit_factor for the conversion, "
          "use calculator to multiply, then answer in one sentence.")


def worked_example() -> list[BaseMessage]:
    """One solved question as chat turns: a 135M model copies a pattern far better than it follows rules."""
    steps = [("search", {"topic": "mount everest"}), ("unit_factor", {"from_unit": "metres", "to_unit": "feet"}),
             ("calculator", {"expression": "8849 * 3.281"})]
    by_name = {t.name: t for t in TOOLS}
    turns: list[BaseMessage] = [HumanMessage("How high is Mount Everest in feet?")]
    for i, (name, args) in enumerate(steps):
        result = str(by_name[name].invoke(args))
        turns += [AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"example{i}"}]),
                  ToolMessage(result, tool_call_id=f"example{i}")]
    return turns + [AIMessage(f"Mount Everest is about {result} feet high.")]


EXAMPLE = worked_example()


def build_agent(llm: ChatRadixLM):  # noqa: ANN201 (a compiled LangGraph graph)
    """The agent as LangChain users write it: a model, tools, a system prompt."""
    return create_agent(llm, TOOLS, system_prompt=SYSTEM)


def run(llm: ChatRadixLM, question: str, show: bool = False, recursion_limit: int = 12) -> list[BaseMessage]:
    """Run the agent on `question`; returns the messages after the question. With `show`, print the
    tool calls as their chunks stream in, the tool results and the answer."""
    agent = build_agent(llm)
    inputs = {"messages": [*EXAMPLE, HumanMessage(question)]}
    config = {"recursion_limit": recursion_limit}
    final: list[BaseMessage] = []
    for mode, data in agent.stream(inputs, config, stream_mode=["messages", "values"]):
        if mode == "values":
            final = data["messages"]
        elif show:
            _print_streamed(data[0])
    return final[len(EXAMPLE) + 1:]


def _print_streamed(message: BaseMessage) -> None:
    if isinstance(message, AIMessageChunk):
        for chunk in message.tool_call_chunks:
            print(f"\ncall {chunk['name']}: " if chunk["name"] else chunk["args"], end="", flush=True)
        print(message.text, end="", flush=True)
    elif isinstance(message, ToolMessage):
        print(f"\n  -> {message.content}", flush=True)


def main() -> None:
    question = " ".join(sys.argv[1:]) or "How tall is the Eiffel Tower in feet?"
    llm = ChatRadixLM(model="smollm2", max_tokens=64)
    start = time.perf_counter()
    messages = run(llm, question, show=True)
    steps = [m for m in messages if isinstance(m, AIMessage)]
    later = [m.usage_metadata for m in steps[1:]]
    cached, prompt = sum(u["input_token_details"]["cache_read"] for u in later), sum(u["input_tokens"] for u in later)
    print(f"\n\n{len(steps)} model steps, {sum(len(s.tool_calls) for s in steps)} tool calls in "
          f"{time.perf_counter() - start:.1f} s; steps after the first found {cached} of {prompt} prompt tokens "
          f"cached ({cached / max(prompt, 1):.0%})")


if __name__ == "__main__":
    main()
