"""The agents-under-pressure bench in simulated time (engine real, model and clock simulated): it
runs to the end, outputs agree across systems, and retention + program admission recomputes less
than retention alone, which recomputes less than LRU (on this seed); with a concurrency below the
number of agents, each agent that ends starts the next."""

from __future__ import annotations

from radixlm.bench.agents_under_pressure import AMD_EPYC, INTEL_XEON, make_workload, run_system


def test_simulated_agents_under_pressure_on_a_small_workload():
    workload = make_workload(agents=16, steps=3, seed=1, vocab=49152, system_len=32, task_len=16,
                             obs_len=(8, 24), output_tokens=6, tool_s=(0.2, 3.0))
    pool = workload.working_set(16) // 3
    runs = {name: run_system(None, name, workload, pool, ttl_s=3.0) for name in ("retention+program", "retention", "lru")}
    program, retention, lru = runs["retention+program"], runs["retention"], runs["lru"]
    assert program["outputs"] == retention["outputs"] == lru["outputs"]  # pins and admission change no output
    assert all(len(calls) == 3 for calls in program["outputs"])
    assert lru["recomputed_prompt_tokens"] > 0
    assert program["recomputed_prompt_tokens"] < retention["recomputed_prompt_tokens"] < lru["recomputed_prompt_tokens"]
    assert program["busy_s"] > 0 and program["makespan_s"] >= program["busy_s"]


def test_with_a_concurrency_each_agent_that_ends_starts_the_next():
    workload = make_workload(agents=12, steps=2, seed=2, vocab=49152, system_len=32, task_len=16,
                             obs_len=(8, 24), output_tokens=6, tool_s=(0.2, 1.0))
    assert workload.working_set(12) == len(workload.system) + sum(
        len(t) + sum(len(o) + 6 for o in obs) for t, obs in zip(workload.tasks, workload.observations))
    pool = workload.working_set(4) // 3
    at_once = run_system(None, "lru", workload, pool, ttl_s=3.0)
    closed = run_system(None, "lru", workload, pool, ttl_s=3.0, concurrency=4)
    assert closed["outputs"] == at_once["outputs"]
    # 12 agents, 4 at a time, each at least 2 tool runs of 0.2 s or more: at least 3 in a row
    assert closed["makespan_s"] >= 3 * 2 * 0.2
    assert closed["makespan_s"] > at_once["makespan_s"]
    assert max(closed["completion_by_agent_s"]) < closed["makespan_s"] / 2  # each timed from its own start


def test_the_cost_model_changes_the_timing_and_never_an_output():
    workload = make_workload(agents=8, steps=2, seed=3, vocab=49152, system_len=32, task_len=16,
                             obs_len=(8, 24), output_tokens=6, tool_s=(0.2, 1.0))
    pool = workload.working_set(8) // 3
    amd, intel = (run_system(None, "retention+program", workload, pool, ttl_s=3.0, costs=c) for c in (AMD_EPYC, INTEL_XEON))
    assert amd["outputs"] == intel["outputs"]
    assert amd["busy_s"] != intel["busy_s"]
    # every pass is charged: at least each pass's fixed cost
    for run, costs in ((amd, AMD_EPYC), (intel, INTEL_XEON)):
        assert run["busy_s"] >= run["extend_passes"] * costs.extend_pass_s + run["decode_passes"] * costs.q4_min_s
