"""Trace retention with real agents on SmolLM2 and a small KV pool: while a DSPy ReAct agent's or a
LangChain agent's tool runs (it sleeps, and other traffic fills the pool meanwhile), the engine keeps
the agent's path, so its next call finds the resumed prefix cached; the trace ends with the agent."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Iterator

import dspy
import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import StructuredTool

import radixlm
from radixlm.adapters.dspy import LM
from radixlm.adapters.langchain import ChatRadixLM
from radixlm.adapters.langchain_common import forget_client
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.server import EngineServer

pytestmark = pytest.mark.slow

POOL = 1600


@pytest.fixture(scope="module")
def served(smollm2, tmp_path_factory) -> Iterator[radixlm.Client]:
    """An engine with trace retention on a small pool, served from a thread of the test process."""
    engine = Engine(smollm2.model, EngineConfig(kv_cache_tokens=POOL, max_pinned_share=0.6, trace_ttl_s=600),
                    smollm2.eos_token_ids, smollm2.tokenizer)
    endpoint = f"ipc://{tmp_path_factory.mktemp('retention') / 'engine.sock'}"
    server = EngineServer(engine, endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = radixlm.connect(endpoint, spawn=False, timeout=300)
    try:
        yield client
    finally:
        client.close()
        forget_client(endpoint, "smollm2")
        server.stop()
        thread.join(timeout=10)


def busy_tool(client: radixlm.Client, answer: str) -> str:
    """What a slow tool looks like to the engine: the agent is away, and other work fills the pool."""
    time.sleep(0.2)
    for i in range(4):  # unrelated prompts never seen before, more than the pool holds together
        client.generate(f"Note {uuid.uuid4().hex}: " + " ".join(f"item{i}-{j}" for j in range(90)), max_new_tokens=1)
    return answer


def wait_for_end(client: radixlm.Client, trace_ids: set[str]) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = client.stats(check_integrity=True)
        if all(stats["traces"][t]["ended"] for t in trace_ids) and stats["pins"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"traces {trace_ids} did not end: {client.stats()}")


class AgentTask(dspy.Signature):
    """Answer the question. First call `search` to look the fact up; call `finish` once an observation
    answers the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def test_dspy_react_resumes_from_the_kept_path_under_pressure(served):
    def search(query: str) -> str:
        """Search the knowledge base for a topic."""
        return busy_tool(served, "The Eiffel Tower is 330 metres tall.")

    agent = dspy.ReAct(AgentTask, tools=[search], max_iters=2)
    agent.react.demos = [dspy.Example(  # a 135M model copies a worked step far better than it follows rules
        question="How long is the Great Wall of China?", trajectory="",
        next_thought="I must search before I answer.", next_tool_name="search",
        next_tool_args={"query": "Great Wall of China length"})]
    lm = LM(client=served, cache=False, max_tokens=96, num_retries=0)
    before = served.stats()
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = agent(question="Search: how tall is the Eiffel Tower in metres?")
    assert pred.trajectory["tool_name_0"] == "search"
    stats = wait_for_end(served, set(served.stats()["traces"]) - set(before["traces"]))
    react_steps = lm.history[:-1]  # the last call extracts the answer with a prompt of its own
    assert len(react_steps) >= 2
    assert stats["evicted_tokens"] > before["evicted_tokens"]  # the pool really was under pressure
    for entry in react_steps[1:]:
        usage = entry["usage"]
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        assert cached >= 0.8 * usage["prompt_tokens"], (usage, stats)
    (trace,) = [t for k, t in stats["traces"].items() if k not in before["traces"]]
    assert trace["saved_tokens"] > 0 and trace["recomputed_tokens"] == 0 and trace["pinned_seconds"] > 0


def test_langchain_agent_resumes_from_the_kept_path_under_pressure(served):
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
    from langchain_core.runnables import RunnableLambda

    search = StructuredTool.from_function(
        lambda query: busy_tool(served, "The Great Wall of China is 21196 km long."),
        name="search", description="Search the knowledge base for a topic.")
    llm = ChatRadixLM(endpoint=served.conn.endpoint, max_tokens=48)
    act = llm.bind_tools([search], tool_choice="any")
    answer = llm.bind_tools([search], tool_choice="none")
    before = served.stats()

    def loop(_: object) -> list:
        messages = [SystemMessage("Use search to look facts up, then answer."),
                    HumanMessage("How long is the Great Wall of China?")]
        reply = act.invoke(messages)
        messages += [reply, *(ToolMessage(search.invoke(c["args"]), tool_call_id=c["id"]) for c in reply.tool_calls)]
        messages.append(answer.invoke(messages))
        return messages

    messages = RunnableLambda(loop).invoke(None, {"run_id": uuid.uuid4()})
    steps = [m for m in messages if isinstance(m, AIMessage)]
    assert steps[0].tool_calls and len(steps) == 2
    stats = wait_for_end(served, set(served.stats()["traces"]) - set(before["traces"]))
    assert stats["evicted_tokens"] > before["evicted_tokens"]
    resumed = steps[1].usage_metadata
    assert resumed["input_token_details"]["cache_read"] >= 0.8 * resumed["input_tokens"], resumed
    (trace,) = [t for k, t in stats["traces"].items() if k not in before["traces"]]
    assert trace["calls"] == 2 and trace["saved_tokens"] > 0 and trace["recomputed_tokens"] == 0
