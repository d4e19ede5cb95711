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
from typing import Literal

from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from radixlm.adapters.langchain import ChatRadixLM
from radixlm.demo import tools as demo_tools

FACTORS = {("metres", "feet"): 3.281, ("kilometres", "miles"): 0.621, ("metres", "miles"): 0.000621,
           ("kilometres", "feet"): 3281.0}


class CalculatorArgs(BaseModel):
    expression: str = Field(description="arithmetic such as '330 * 3.281'", pattern=r"^[0-9.+*/() -]{1,30}$")


# A search over the demo's local knowledge base, and its safe calculator with a schema the grammar
# enforces (digits and operators only, at most 30 characters).
search = tool(demo_tools.search)
calculator = tool("calculator", args_schema=CalculatorArgs)(demo_tools.calculator)


@tool
def unit_factor(from_unit: Literal["metres", "kilometres"], to_unit: Literal["feet", "miles"]) -> str:
    """The number to multiply a value in `from_unit` by to get it in `to_unit` (e.g. metres to feet)."""
    return str(FACTORS[(from_unit, to_unit)])


TOOLS = [search, unit_factor, calculator]
SYSTEM = ("Answer the question with the tools: search for the fact, ask unit_factor for the conversion, "
          "use calculator to multiply, then answer in one sentence.")


def worked_example() -> list[BaseMessage]:
    """One solved question as chat turns: a 135M model copies a pattern far better than it follows rules."""
    steps = [("search", {"query": "mount everest"}), ("unit_factor", {"from_unit": "metres", "to_unit": "feet"}),
             ("calculator", {"expression": "8849 * 3.281"})]
    by_name = {t.name: t for t in TOOLS}
    turns: list[BaseMessage] = [HumanMessage("How high is Mount Everest in feet?")]
    for i, (name, args) in enumerate(steps):
        result = str(by_name[name].invoke(args))
        turns += [AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"example{i}"}]),
                  ToolMessage(result, tool_call_id=f"example{i}")]
    return turns + [AIMessage(f"Mount Everest is about {result} feet high.")]


EXAMPLE = worked_example()


def build_agent(llm: ChatRadixLM, max_steps: int = 5):  # noqa: ANN201 (a compiled LangGraph graph)
    """The agent as LangChain users write it: a model, tools, a system prompt, and a middleware that
    makes the model answer (tool_choice="none") at its `max_steps`-th call."""
    example_steps = sum(isinstance(m, AIMessage) for m in EXAMPLE)

    @wrap_model_call
    def answer_by_last_step(request, handler):  # noqa: ANN001, ANN202
        steps = sum(isinstance(m, AIMessage) for m in request.messages) - example_steps
        return handler(request.override(tool_choice="none") if steps >= max_steps - 1 else request)

    return create_agent(llm, TOOLS, system_prompt=SYSTEM, middleware=[answer_by_last_step])


def run(llm: ChatRadixLM, question: str, show: bool = False, max_steps: int = 5) -> list[BaseMessage]:
    """Run the agent on `question`; returns the messages after the question. With `show`, print the
    tool calls as their chunks stream in, the tool results and the answer."""
    agent = build_agent(llm, max_steps)
    final: list[BaseMessage] = []
    for mode, data in agent.stream({"messages": [*EXAMPLE, HumanMessage(question)]},
                                   stream_mode=["messages", "values"]):
        if mode == "values":
            final = data["messages"]
        elif show:
            _print_streamed(data[0])
    return final[len(EXAMPLE) + 1:]


def _print_streamed(message: BaseMessage) -> None:
    if isinstance(message, AIMessageChunk):
        for chunk in message.tool_call_chunks:
            print((f"\ncall {chunk['name']}: " if chunk["name"] else "") + chunk["args"], end="", flush=True)
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
