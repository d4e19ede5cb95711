"""The agents-under-pressure bench in simulated time (engine real, model and clock simulated): it
runs to the end, outputs agree across systems, and retention + program admission recomputes less
than retention alone, which recomputes less than LRU (on this seed)."""

from __future__ import annotations

from radixlm.bench.agents_under_pressure import make_workload, run_system


def test_simulated_agents_under_pressure_on_a_small_workload():
    workload = make_workload(agents=16, steps=3, seed=1, vocab=49152, system_len=32, task_len=16,
                             obs_len=(8, 24), output_tokens=6, tool_s=(0.2, 3.0))
    pool = workload.working_set // 3
    runs = {name: run_system(None, name, workload, pool, ttl_s=3.0) for name in ("retention+program", "retention", "lru")}
    program, retention, lru = runs["retention+program"], runs["retention"], runs["lru"]
    assert program["outputs"] == retention["outputs"] == lru["outputs"]  # pins and admission change no output
    assert all(len(calls) == 3 for calls in program["outputs"])
    assert lru["recomputed_prompt_tokens"] > 0
    assert program["recomputed_prompt_tokens"] < retention["recomputed_prompt_tokens"] < lru["recomputed_prompt_tokens"]
    assert program["busy_s"] > 0 and program["makespan_s"] >= program["busy_s"]
