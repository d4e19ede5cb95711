"""`radixlm demo`, the main job: DSPy ReAct agents and a LangChain agent at once on the embedded model
through one engine, with a live progress board, then a summary of answers, calls and prefix reuse."""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import radixlm

from .agents import AgentRun, run_dspy_agent, run_langchain_agent
from .progress import Board

DSPY_QUESTIONS = [
    "How tall is the Eiffel Tower in feet?",
    "How many years after the Eiffel Tower was completed was Python first released?",
    "How many hours does the Moon take to orbit the Earth?",
    "How much higher is Mount Everest than the Eiffel Tower, in metres?",
]
LANGCHAIN_QUESTION = "What is twelve times the height of the Eiffel Tower in metres?"


def run_demo(model: str = "smollm2", agents: int = 4, dtype: str = "float32") -> int:
    """Run `agents` DSPy agents and one LangChain agent concurrently on a private engine; print the summary.
    Returns the process exit code (1 if an agent failed with an error)."""
    with tempfile.TemporaryDirectory(prefix="radixlm-demo-") as tmp:
        endpoint = f"ipc://{Path(tmp) / 'engine.sock'}"
        start = time.perf_counter()
        client = radixlm.connect(endpoint, model, dtype=dtype)
        print(f"engine ready in {time.perf_counter() - start:.1f} s ({model}, {endpoint})\n")
        try:
            runs, seconds = _run_agents(client, endpoint, agents)
            _summary(runs, seconds, client.stats())
        finally:
            client.shutdown()
    return 1 if any(r.error for r in runs) else 0


def _run_agents(client: radixlm.Client, endpoint: str, agents: int) -> tuple[list[AgentRun], float]:
    import dspy  # noqa: F401  (imported here, before the threads start, so DSPy configures once)

    questions = [DSPY_QUESTIONS[i % len(DSPY_QUESTIONS)] for i in range(agents)]
    names = [(f"dspy-{i + 1}", "DSPy") for i in range(agents)] + [("langchain", "LangChain")]
    print("agents:")
    for (name, _), question in zip(names, [*questions, LANGCHAIN_QUESTION]):
        print(f"  {name:<10} {question}")
    print()
    start = time.perf_counter()
    with Board(names) as board, ThreadPoolExecutor(agents + 1) as pool:
        futures = [pool.submit(run_dspy_agent, client, name, q, board) for (name, _), q in zip(names, questions)]
        futures.append(pool.submit(run_langchain_agent, endpoint, "langchain", LANGCHAIN_QUESTION, board))
        runs = [f.result() for f in futures]
    return runs, time.perf_counter() - start


def _summary(runs: list[AgentRun], seconds: float, stats: dict) -> None:
    print("\nsummary")
    for r in runs:
        reuse = r.cached_tokens / r.prompt_tokens if r.prompt_tokens else 0.0
        print(f"  {r.name:<10} {r.framework:<9} {r.calls} calls, {r.cached_tokens}/{r.prompt_tokens} prompt tokens "
              f"from the prefix cache ({reuse:.0%}), {r.completion_tokens} generated, {r.seconds:.1f} s")
        print(f"             Q: {r.question}")
        for step in r.steps:
            print(f"             - {step}")
        print(f"             A: {r.answer}" if r.error is None else f"             FAILED: {r.error}")
    calls = sum(r.calls for r in runs)
    prompt = sum(r.prompt_tokens for r in runs)
    cached = sum(r.cached_tokens for r in runs)
    generated = sum(r.completion_tokens for r in runs)
    print(f"\n  {len(runs)} agents ran at once: {calls} LM calls in {seconds:.1f} s "
          f"({calls / seconds:.2f} calls/s, {generated / seconds:.1f} generated tok/s)")
    print(f"  prefix reuse: {cached} of {prompt} prompt tokens came from the radix cache "
          f"({cached / max(prompt, 1):.0%}); the engine computed {prompt - cached} instead of {prompt} "
          f"({prompt / max(prompt - cached, 1):.1f}x fewer prompt tokens)")
    print(f"  engine: {stats['forward_passes']} forward passes, hit rate {stats['hit_rate']:.0%}, "
          f"{len(stats['traces'])} agent traces")
