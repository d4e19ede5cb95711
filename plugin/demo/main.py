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

# (question, the number a right answer contains): each needs a lookup or a calculation.
DSPY_QUESTIONS = [
    ("How tall is the Eiffel Tower in metres?", "330"),
    ("What is 1234 times 5678?", "7006652"),
    ("In which year was Python first released?", "1991"),
    ("What is 17.5 times 42?", "735"),
]
LANGCHAIN_QUESTION = ("How high is Mount Everest in metres?", "8849")


def is_right(answer: str, expected: str) -> bool:
    """Whether an answer states the expected number (thousands separators aside)."""
    return expected in answer.replace(",", "")


def run_demo(model: str = "smollm2", agents: int = 4, dtype: str = "float32") -> int:
    """Run `agents` DSPy agents and one LangChain agent concurrently on a private engine; print the summary.
    Returns the process exit code (1 if an agent failed with an error)."""
    with tempfile.TemporaryDirectory(prefix="radixlm-demo-") as tmp:
        endpoint = f"ipc://{Path(tmp) / 'engine.sock'}"
        start = time.perf_counter()
        client = radixlm.connect(endpoint, model, dtype=dtype)
        print(f"engine ready in {time.perf_counter() - start:.1f} s ({model}, {endpoint})\n")
        try:
            runs, seconds = _run_agents(client, endpoint, model, agents)
            _summary(runs, seconds, client.stats())
        finally:
            client.shutdown()
    return 1 if any(r.error for r in runs) else 0


def _run_agents(client: radixlm.Client, endpoint: str, model: str, agents: int) -> tuple[list[AgentRun], float]:
    from radixlm.adapters.dspy import LM
    from radixlm.adapters.langchain_common import get_client

    # built here, before the threads start, so DSPy's settings are configured from this thread only
    lm = LM(client=client, cache=False, max_tokens=256, num_retries=0)
    # the LangChain agent's process-wide client attaches now, while the engine is idle and answers
    # the attach ping at once (under load a late attach could take the engine for absent)
    get_client(endpoint, model)
    questions = [DSPY_QUESTIONS[i % len(DSPY_QUESTIONS)] for i in range(agents)]
    names = [(f"dspy-{i + 1}", "DSPy") for i in range(agents)] + [("langchain", "LangChain")]
    print("agents:")
    for (name, _), (question, _) in zip(names, [*questions, LANGCHAIN_QUESTION]):
        print(f"  {name:<10} {question}")
    print()
    start = time.perf_counter()
    with Board(names) as board, ThreadPoolExecutor(agents + 1) as pool:
        futures = [pool.submit(run_dspy_agent, lm, name, q, board) for (name, _), (q, _) in zip(names, questions)]
        futures.append(pool.submit(run_langchain_agent, endpoint, model, "langchain", LANGCHAIN_QUESTION[0], board))
        runs = [f.result() for f in futures]
    for run, (_, expected) in zip(runs, [*questions, LANGCHAIN_QUESTION]):
        run.expected = expected
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
        verdict = "right" if is_right(r.answer, r.expected) else f"wrong, expected {r.expected}"
        print(f"             A: {r.answer}  ({verdict})" if r.error is None else f"             FAILED: {r.error}")
        if r.repeated_calls:
            print(f"             ({r.repeated_calls} repeated tool call(s) answered from the earlier result)")
    right = sum(r.error is None and is_right(r.answer, r.expected) for r in runs)
    print(f"\n  answers: {right} of {len(runs)} right")
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
