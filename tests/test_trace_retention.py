"""Trace retention (pins on an agent's newest path while it runs a tool) and the program policy, on the
fake model that reads the real KV pool."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from fake_model import FakeModel, run_checked
from radixlm.client import end_trace_everywhere
from radixlm.connection import EngineError
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.policy import SERVICE_QUANTUM, order_waiting
from radixlm.engine.radix_cache import IntegrityError
from radixlm.engine.request import Request, ReqStatus
from radixlm.protocol import SamplingParams
from radixlm.engine.stats import TraceStats
from radixlm.engine.traces import TraceTable
from server_harness import client_for, fake_server

EOS = 0
PARAMS = SamplingParams(max_new_tokens=8, ignore_eos=True)


def make_engine(model=None, **cfg) -> Engine:
    """An engine on `model` (default: the fake model) with `cfg`."""
    return Engine(model or FakeModel(), EngineConfig(**cfg), eos_token_ids=[EOS])


def call(engine: Engine, prompt: list[int], trace_id: str | None = None, params: SamplingParams = PARAMS):
    """Run one call to completion (with the ghost pass that hands its KV to the tree)."""
    req = engine.add_request(prompt, params, trace_id=trace_id)
    return run_checked(engine)[req.rid]


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 64) for _ in range(n)]


def flood(engine: Engine, count: int, length: int, seed: int) -> None:
    """Untraced calls with unrelated prompts, one after another: LRU pressure on everything else."""
    for i in range(count):
        call(engine, tokens(length, seed + i))


def resumed_cached(retention: bool) -> tuple[int, int, Engine]:
    engine = make_engine(kv_cache_tokens=200, trace_retention=retention)
    first = tokens(40, 1)
    r1 = call(engine, first, "agent")
    flood(engine, 6, 60, seed=100)  # the agent is in its tool meanwhile
    path = first + r1.output_ids
    r2 = call(engine, path + tokens(5, 2), "agent")
    return r2.cached_tokens, len(path), engine


def test_pinned_path_survives_eviction_pressure_while_the_trace_is_in_a_tool():
    cached_on, path_len, engine = resumed_cached(retention=True)
    cached_off, _, _ = resumed_cached(retention=False)
    assert cached_on == path_len
    assert cached_off < 10  # LRU evicted the agent's path while it was away
    record = engine.stats.traces["agent"]
    assert record.saved_tokens == path_len
    assert record.recomputed_tokens == 0
    assert engine.stats.evicted_tokens > 0


def test_recomputed_tokens_counted_without_retention():
    engine = make_engine(kv_cache_tokens=200, trace_retention=False)
    first = tokens(40, 1)
    r1 = call(engine, first, "agent")
    flood(engine, 6, 60, seed=100)
    r2 = call(engine, first + r1.output_ids + tokens(5, 2), "agent")
    computed_by_call = len(first) + len(r1.output_ids) - 1  # its last token's KV comes from the later ghost pass
    assert engine.stats.traces["agent"].recomputed_tokens == computed_by_call - r2.cached_tokens > 0


def test_end_trace_releases_the_pin():
    engine = make_engine(kv_cache_tokens=500)
    call(engine, tokens(30, 3), "agent")
    retention = engine.kv.retention
    assert set(retention.pins) == {"agent"}
    assert engine.kv.cache.protected_size > 0
    assert engine.end_trace("agent") == {"trace_id": "agent", "ended": True, "released_pin": True}
    assert not retention.pins and engine.kv.cache.protected_size == 0
    assert retention.released["end_trace"] == 1
    record = engine.stats.traces["agent"]
    assert record.ended and record.pinned_tokens == 0 and record.pinned_seconds > 0
    assert engine.end_trace("agent")["ended"] is False  # ending twice changes nothing
    engine.check_integrity()


def test_next_call_releases_the_previous_pin_and_pins_its_own_path():
    engine = make_engine(kv_cache_tokens=500)
    first = tokens(30, 4)
    r1 = call(engine, first, "agent")
    old = engine.kv.retention.pins["agent"].node
    call(engine, first + r1.output_ids + [5, 6], "agent")
    assert engine.kv.retention.released["next_call"] == 1
    assert engine.kv.retention.pins["agent"].node is not old
    engine.check_integrity()


def test_ttl_releases_the_pin():
    engine = make_engine(kv_cache_tokens=500, trace_ttl_s=0.05)
    now = [0.0]
    engine.traces.clock = engine.kv.retention.clock = lambda: now[0]
    call(engine, tokens(30, 5), "agent")
    assert engine.stats_dict()["pins"] == 1
    now[0] += 0.1
    stats = engine.stats_dict()
    assert stats["pins"] == 0 and stats["pins_released_ttl"] == 1
    assert engine.kv.cache.protected_size == 0


def test_pressure_releases_pins_lowest_benefit_first():
    engine = make_engine(kv_cache_tokens=300)
    now = [0.0]
    engine.traces.clock = engine.kv.retention.clock = lambda: now[0]
    paths = {}
    for name, seed, tool_seconds in (("slow-tools", 6, 10.0), ("fast-tools", 7, 0.5)):
        first = tokens(30, seed)
        r1 = call(engine, first, name)
        now[0] += tool_seconds
        paths[name] = first + r1.output_ids + [9]
        call(engine, paths[name], name)
    now[0] += 0.1
    assert set(engine.kv.retention.pins) == {"slow-tools", "fast-tools"}
    # Needs every free and evictable slot and some of one pin's: the agent expected back later goes.
    need = engine.kv.pool.allocator.available + engine.kv.cache.evictable_size + 10
    big = engine.add_request(tokens(need, 8), SamplingParams(max_new_tokens=1))
    engine.step()
    assert big.status is not ReqStatus.WAITING
    assert set(engine.kv.retention.pins) == {"fast-tools"}
    assert engine.kv.retention.released["pressure"] == 1
    run_checked(engine)


@pytest.mark.parametrize("policy, busy", [("lpm", True), ("fcfs", True), ("dfs-weight", True), ("program", False)])
def test_admission_never_waits_on_pins_but_under_the_program_policy_while_busy(policy: str, busy: bool):
    """A new untraced call ranks below every open agent under the program policy: there it takes
    their pins only when the engine would otherwise idle (busy case: the program tests below)."""
    engine = make_engine(kv_cache_tokens=300, max_pinned_share=1.0, policy=policy)
    for i in range(4):
        call(engine, tokens(50, 10 + i), f"agent-{i}")
    assert len(engine.kv.retention.pins) == 4
    assert engine.kv.pool.allocator.available + engine.kv.cache.evictable_size < 100
    if busy:
        running = engine.add_request(tokens(10, 19), SamplingParams(max_new_tokens=20, ignore_eos=True))
        engine.step()
        assert running.status is ReqStatus.DECODING
    big = engine.add_request(tokens(240, 20), SamplingParams(max_new_tokens=2))
    engine.step()  # admitted at once: pins give way
    assert big.status is not ReqStatus.WAITING
    assert engine.kv.retention.released["idle" if policy == "program" else "pressure"] >= 3
    if policy == "program":
        assert set(engine.kv.retention.pins) == {"agent-0"}  # lowest-ranked first: the first agent kept its pin
    run_checked(engine)


def two_agents_and_a_busy_call(clock: list[float]) -> tuple[Engine, dict[str, list[int]], Request]:
    """A program-policy engine with the pins of "old" (started first, so ranked above) and "young"
    (a later start), and an untraced call decoding, so the engine is busy."""
    engine = make_engine(kv_cache_tokens=300, policy="program", max_pinned_share=1.0)
    engine.traces.clock = engine.kv.retention.clock = lambda: clock[0]
    paths = {}
    for name, length, seed in (("old", 80, 1), ("young", 60, 2)):
        prompt = tokens(length, seed)
        paths[name] = prompt + call(engine, prompt, name).output_ids
        clock[0] += 1.0
    busy = engine.add_request(tokens(20, 3), SamplingParams(max_new_tokens=30, ignore_eos=True))
    engine.step()
    assert busy.status is ReqStatus.DECODING and set(engine.kv.retention.pins) == {"old", "young"}
    return engine, paths, busy


def test_program_policy_lower_ranked_call_waits_for_higher_ranked_pins_while_busy_and_takes_them_when_idle():
    engine, paths, busy = two_agents_and_a_busy_call([0.0])
    # More than free + evictable, even once the busy call's 50 tokens are evictable: old's pin must go.
    room = engine.kv.available(include_pins=False)
    prompt = paths["young"] + tokens(room + 60, 4)
    young = engine.add_request(prompt, SamplingParams(max_new_tokens=1), trace_id="young")
    while busy.status is not ReqStatus.FINISHED:
        engine.step()
        engine.check_integrity()
        assert young.status is ReqStatus.WAITING and "old" in engine.kv.retention.pins
    engine.step()  # nothing else runs: the engine would idle, so old's pin gives way
    assert young.status is not ReqStatus.WAITING
    assert "old" not in engine.kv.retention.pins and engine.kv.retention.released["idle"] == 1
    run_checked(engine)
    assert young.output_ids == engine.model.reference(prompt, 1)  # pins never change outputs
    assert busy.output_ids == engine.model.reference(busy.prompt_ids, 30)


def test_program_policy_higher_ranked_call_releases_lower_ranked_pins_at_once():
    engine, paths, busy = two_agents_and_a_busy_call([0.0])
    room = engine.kv.available(include_pins=False)  # 20 short of free + evictable: young's pin must go
    old = engine.add_request(paths["old"] + tokens(room + 20, 5), SamplingParams(max_new_tokens=1), trace_id="old")
    engine.step()
    assert busy.status is ReqStatus.DECODING and old.status is not ReqStatus.WAITING
    assert set(engine.kv.retention.pins) == set() and engine.kv.retention.released["pressure"] == 1
    assert engine.kv.retention.released["next_call"] == 1  # old's own pin: its call holds the path
    run_checked(engine)


def test_program_policy_releases_pins_lowest_ranked_first():
    engine = make_engine(kv_cache_tokens=400, policy="program", max_pinned_share=0.25)
    now = [0.0]
    engine.traces.clock = engine.kv.retention.clock = lambda: now[0]
    for i in range(3):  # 38 tokens each: two fit in the budget of 100
        call(engine, tokens(30, 120 + i), f"agent-{i}")
        now[0] += 1.0
    assert set(engine.kv.retention.pins) == {"agent-0", "agent-1"}  # the latest program's pin went
    assert engine.kv.retention.released["budget"] == 1


def test_budget_caps_the_pinned_share():
    engine = make_engine(kv_cache_tokens=400, max_pinned_share=0.25)
    for i in range(5):
        call(engine, tokens(40, 30 + i), f"agent-{i}")
        assert engine.kv.retention.releasable() <= 100
    assert engine.kv.retention.released["budget"] >= 2


def agents_workload(engine: Engine, n_agents: int = 6, steps: int = 4, seed: int = 0) -> dict[str, list[list[int]]]:
    """Interleaved multi-step agents (each step's prompt extends the previous path) plus untraced
    noise, on whatever pool the engine has; returns every call's output ids per agent."""
    rng = random.Random(seed)
    paths = {f"a{i}": tokens(rng.randrange(20, 40), seed * 100 + i) for i in range(n_agents)}
    outs: dict[str, list[list[int]]] = {name: [] for name in paths}
    for step in range(steps):
        reqs = {name: engine.add_request(path, PARAMS, trace_id=name) for name, path in paths.items()}
        engine.add_request(tokens(30, 1000 + step), PARAMS)
        results = run_checked(engine)
        for name, req in reqs.items():
            out = results[req.rid].output_ids
            outs[name].append(out)
            paths[name] = paths[name] + out + tokens(rng.randrange(2, 8), step * 10 + len(name))
        if step == steps - 2:
            engine.end_trace("a0")
    return outs


@pytest.mark.parametrize("kv", [150, 2000])
def test_outputs_identical_with_retention_on_and_off(kv: int):
    off = agents_workload(make_engine(kv_cache_tokens=kv, trace_retention=False))
    on = make_engine(kv_cache_tokens=kv)
    assert agents_workload(on) == off
    program = make_engine(kv_cache_tokens=kv, policy="program")
    assert agents_workload(program) == off
    on.end_trace("a1")
    on.flush_cache()  # releases the remaining pins first
    on.check_integrity()


def test_integrity_check_covers_pins():
    engine = make_engine(kv_cache_tokens=500)
    call(engine, tokens(30, 40), "agent")
    engine.check_integrity()
    pin = engine.kv.retention.pins["agent"]
    engine.kv.cache.unlock(pin.node)  # a pin whose lock went missing
    with pytest.raises(IntegrityError, match="lock_ref"):
        engine.check_integrity()
    engine.kv.cache.lock(pin.node)
    engine.kv.cache.lock(pin.node)  # a lock no request or pin accounts for
    with pytest.raises(IntegrityError, match="lock_ref"):
        engine.check_integrity()


def waiting_request(trace_id: str | None, prompt: list[int]) -> Request:
    return Request(prompt, PARAMS, trace_id=trace_id)


def test_program_policy_orders_by_attained_service_then_program_start_then_prefix():
    stats: dict[str, TraceStats] = {}
    now = [0.0]
    traces = TraceTable(lambda: stats, clock=lambda: now[0])
    engine = make_engine(kv_cache_tokens=500)
    cached = tokens(40, 50)
    call(engine, cached)
    reqs = {}
    for name, started, service in (("heavy", 0.0, 4 * SERVICE_QUANTUM), ("old", 1.0, 10), ("young", 2.0, 20)):
        now[0] = started
        reqs[name] = waiting_request(name, cached + [1] if name == "heavy" else tokens(20, len(name)))
        traces.on_arrival(reqs[name])
        traces.on_computed(reqs[name], service)
    now[0] = 3.0
    reqs["young-2"] = waiting_request("young", cached + [2])
    traces.on_arrival(reqs["young-2"])
    waiting = [reqs["heavy"], reqs["young"], reqs["young-2"], reqs["old"]]
    order = order_waiting(waiting, "program", engine.kv.cache, traces)
    # least attained service first; within a level the program that started first; then lpm
    assert [r.rid for r in order] == [reqs[k].rid for k in ("old", "young-2", "young", "heavy")]
    assert order_waiting(waiting, "lpm", engine.kv.cache)[0] is reqs["heavy"]


def test_program_policy_needs_the_trace_table():
    with pytest.raises(ValueError, match="trace table"):
        order_waiting([waiting_request("t", [1, 2])], "program", make_engine().kv.cache)


def test_config_rejects_bad_retention_settings():
    with pytest.raises(ValueError, match="trace_ttl_s"):
        EngineConfig(trace_ttl_s=0).validate()
    with pytest.raises(ValueError, match="max_pinned_share"):
        EngineConfig(max_pinned_share=1.5).validate()


def test_end_trace_over_the_wire_sync_and_async(tmp_path):
    with fake_server(tmp_path, kv_cache_tokens=500) as server:
        client = client_for(server)
        try:
            client.generate(tokens(30, 60), max_new_tokens=4, trace_id="sync-agent")
            client.generate(tokens(30, 61), max_new_tokens=4, trace_id="async-agent")
            deadline = time.monotonic() + 5
            while client.stats()["pins"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # the ghost pass that hands the KV to the tree runs just after Done
            stats = client.stats(check_integrity=True)
            assert stats["pins"] == 2 and stats["traces"]["sync-agent"]["pinned_tokens"] > 0
            assert client.end_trace("sync-agent")["released_pin"] is True
            assert asyncio.run(client.aio.end_trace("async-agent"))["released_pin"] is True
            stats = client.stats(check_integrity=True)
            assert stats["pins"] == 0 and stats["traces"]["async-agent"]["ended"] is True
            with pytest.raises(EngineError, match="trace_id"):
                client.end_trace("")
        finally:
            client.close()


def test_end_trace_everywhere_ends_the_trace_on_the_engines_that_served_it(tmp_path):
    with fake_server(tmp_path, kv_cache_tokens=500) as server:
        served, idle = client_for(server), client_for(server)
        try:
            served.generate(tokens(30, 70), max_new_tokens=4, trace_id="root-run")
            assert "root-run" in served.open_traces and "root-run" not in idle.open_traces
            end_trace_everywhere("root-run")
            assert not served.open_traces
            deadline = time.monotonic() + 5
            while not served.stats()["traces"]["root-run"]["ended"] and time.monotonic() < deadline:
                time.sleep(0.01)
            stats = served.stats(check_integrity=True)
            assert stats["traces"]["root-run"]["ended"] and stats["pins"] == 0
        finally:
            served.close()
            idle.close()


def test_pending_ghost_passes_give_way_before_pins():
    engine = make_engine(kv_cache_tokens=200)
    call(engine, tokens(40, 80), "agent")
    other = engine.add_request(tokens(60, 81), PARAMS)
    while other.status is not ReqStatus.FINISHED:
        engine.step()
    assert engine.scheduler.finishing == [other]  # its last-token pass is still pending, its path locked
    need = engine.kv.available(include_pins=False) + 30  # only dropping that pass (or a pin) makes room
    engine.add_request(tokens(need, 82), SamplingParams(max_new_tokens=1))
    engine.step()
    assert set(engine.kv.retention.pins) == {"agent"}
    assert other not in engine.scheduler.finishing and other.row is None
    run_checked(engine)


def test_ttl_mode_pins_survive_the_next_call_and_give_way_oldest_first():
    engine = make_engine(kv_cache_tokens=300, max_pinned_share=1.0)
    engine.kv.retention.mode = "ttl"
    first = tokens(30, 90)
    r1 = call(engine, first, "old")
    call(engine, tokens(30, 91), "young")
    call(engine, first + r1.output_ids + [3], "old")  # the next call does not release a TTL pin ...
    assert engine.kv.retention.released["next_call"] == 0
    assert engine.end_trace("old")["released_pin"] is False  # ... nor does the trace's end
    need = engine.kv.pool.allocator.available + engine.kv.cache.evictable_size + 10
    engine.add_request(tokens(need, 92), SamplingParams(max_new_tokens=1))
    engine.step()
    assert set(engine.kv.retention.pins) == {"old"}  # its second call renewed its pin: "young"'s is the oldest
    run_checked(engine)
