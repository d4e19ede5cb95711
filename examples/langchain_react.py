"""A tool-calling ReAct loop with langchain-core alone: the model calls a calculator and a local
knowledge-base search until it answers. Tool calls are generated under a grammar, so they always parse.

    python examples/langchain_react.py "What is the height of the Eiffel Tower in feet?"
"""

from __future__ import annotations

import ast
import operator
import sys

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from radixlm.adapters.langchain import ChatRadixLM

KNOWLEDGE_BASE = {
    "eiffel tower": "The Eiffel Tower in Paris is 330 metres tall. One metre is 3.281 feet.",
    "mount everest": "Mount Everest is 8849 metres high.",
    "great wall": "The Great Wall of China is about 21196 kilometres long.",
    "python": "Python is a programming language created by Guido van Rossum in 1991.",
}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError("only numbers and + - * / ** are allowed")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '330 * 3.281'."""
    try:
        return str(_eval(ast.parse(expression, mode="eval").body))
    except (ValueError, SyntaxError, ZeroDivisionError) as err:
        return f"error: {err}"


@tool
def search(query: str) -> str:
    """Search the local knowledge base for facts about a topic."""
    words = set(query.lower().split())
    hits = [text for key, text in KNOWLEDGE_BASE.items() if words & set(key.split())]
    return "\n".join(hits) or "No results."


TOOLS = {t.name: t for t in (calculator, search)}


def react(question: str, max_steps: int = 5, llm: ChatRadixLM | None = None) -> str:
    llm = llm or ChatRadixLM(model="smollm2", max_tokens=128)
    agent = llm.bind_tools(list(TOOLS.values()), tool_choice="auto")
    messages = [SystemMessage("Answer the question. Use search to look facts up and calculator for arithmetic."),
                HumanMessage(question)]

    def loop(_: object) -> str:
        # One root run: every model call of this loop shares its trace id in the engine's stats.
        for step in range(max_steps):
            reply: AIMessage = agent.invoke(messages)
            messages.append(reply)
            if not reply.tool_calls:
                return str(reply.content)
            for call in reply.tool_calls:
                result = TOOLS[call["name"]].invoke(call["args"])
                print(f"step {step}: {call['name']}({call['args']}) -> {result!r}")
                messages.append(ToolMessage(str(result), tool_call_id=call["id"]))
            cached = reply.usage_metadata["input_token_details"]["cache_read"]
            print(f"         prompt {reply.usage_metadata['input_tokens']} tokens, {cached} from the prefix cache")
        return "(no answer within the step limit)"

    return RunnableLambda(loop).invoke(None)


if __name__ == "__main__":
    print(react(" ".join(sys.argv[1:]) or "What is the height of the Eiffel Tower in feet?"))
