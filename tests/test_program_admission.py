"""Program admission under the program policy (run only as many programs as the KV pool holds the
working sets of; a held-back program's first call runs ahead on room no pin holds), the residual-life
estimate of a tool's remaining time, and the policy-dependent pin budget, on the fake model."""

from __future__ import annotations

import random
import sys

import pytest

from fake_model import FakeConfig, FakeModel, run_checked
from fault_injection import PoisonedModel, culprit_for_prefill
from radixlm.engine import policy
from radixlm.engine.policy import program_limit
from radixlm.engine.request import FinishReason, Request, ReqStatus
from radixlm.engine.stats import TraceStats
from radixlm.engine.trace_retention import DEFAULT_PINNED_SHARE, pinned_share
from radixlm.engine.traces import TraceTable
from radixlm.protocol import SamplingParams
from test_faults import assert_nothing_held
from test_trace_retention import PARAMS, call, make_engine, tokens

BUSY = SamplingParams(max_new_tokens=40, ignore_eos=True)


def engine_at_its_program_limit(clock: list[float], model=None):
    """A program-policy engine on a 300-token pool that has seen one program end (its working set:
    108 tokens, so 2 programs fit) and has two programs started, both now in a tool. `model`: the
    fake model (default) or one wrapping it."""
    engine = make_engine(model, kv_cache_tokens=300, policy="program", trace_ttl_s=30.0)
    engine.traces.clock = engine.kv.retention.clock = lambda: clock[0]
    call(engine, tokens(100, 1), "done")
    engine.end_trace("done")
    assert program_limit(engine.traces, engine.kv.retention.capacity) == 2
    paths = {}
    for name, seed in (("a", 2), ("b", 3)):
        prompt = tokens(30, seed)
        paths[name] = prompt + call(engine, prompt, name).output_ids
    assert engine.traces.started_programs(30.0) == 2
    return engine, paths


def run_ahead(engine, prompt: list[int], trace_id: str) -> list[int]:
    """Run a held-back program's first call, which runs ahead of program admission while an untraced
    call keeps the engine busy; returns the call's path."""
    ahead = engine.stats.calls_run_ahead
    engine.add_request(tokens(10, 4), BUSY)
    engine.step()
    first = engine.add_request(prompt, PARAMS, trace_id=trace_id)
    out = run_checked(engine)[first.rid].output_ids
    assert engine.stats.calls_run_ahead == ahead + 1
    return prompt + out


def test_a_held_back_programs_first_call_runs_ahead_and_its_next_call_waits_until_a_program_ends():
    engine, paths = engine_at_its_program_limit([0.0])
    busy = engine.add_request(tokens(10, 4), BUSY)
    engine.step()
    first = engine.add_request(tokens(30, 5), PARAMS, trace_id="c")
    engine.step()
    assert first.status is not ReqStatus.WAITING  # ran ahead of program admission
    while first.status is not ReqStatus.FINISHED:
        engine.step()
        engine.check_integrity()
    engine.step()  # its ghost pass hands its KV to the tree
    assert engine.stats.calls_run_ahead == 1
    assert engine.traces.started_programs(30.0) == 2  # its program has not started ...
    assert "c" not in engine.kv.retention.pins  # ... so its path is not pinned
    second = engine.add_request(first.prompt_ids + first.output_ids + [7], PARAMS, trace_id="c")
    resumed = engine.add_request(paths["a"] + [7], PARAMS, trace_id="a")
    for _ in range(5):
        engine.step()
        engine.check_integrity()
        assert second.status is ReqStatus.WAITING  # though the pool has room for its prompt
    assert resumed.status is not ReqStatus.WAITING  # a started program's call goes on
    while resumed.status is not ReqStatus.FINISHED:
        engine.step()
    engine.end_trace("b")
    engine.step()
    assert second.status is not ReqStatus.WAITING and busy.status is ReqStatus.DECODING
    assert engine.stats.calls_run_ahead == 1  # only a trace's first call runs ahead
    results = run_checked(engine)
    assert first.output_ids == engine.model.reference(first.prompt_ids, PARAMS.max_new_tokens)
    assert results[second.rid].output_ids == engine.model.reference(second.prompt_ids, PARAMS.max_new_tokens)


def test_a_call_running_ahead_takes_no_pin(monkeypatch):
    """The pool's free and evictable slots are short of a new program's first call; only the running
    programs' pins would make room, and the program order puts the new program above them (a service
    level of 16 tokens: they have attained more), so a started program's call could take them. The
    call waits instead of running ahead, and the calls after it in the queue are still admitted."""
    monkeypatch.setattr(policy, "SERVICE_QUANTUM", 16)
    engine, paths = engine_at_its_program_limit([0.0])
    busy = engine.add_request(tokens(10, 4), BUSY)
    engine.step()
    room = engine.kv.pool.allocator.available + engine.kv.cache.evictable_size
    big = engine.add_request(tokens(room + 5, 6), PARAMS, trace_id="c")
    plain = engine.add_request(tokens(5, 7), PARAMS)
    engine.step()
    engine.check_integrity()
    assert big.status is ReqStatus.WAITING and plain.status is not ReqStatus.WAITING
    assert set(engine.kv.retention.pins) == {"a", "b"} and engine.stats.calls_run_ahead == 0
    assert busy.status is ReqStatus.DECODING
    engine.end_trace("a")
    engine.end_trace("b")
    run_checked(engine)


def test_a_new_program_starts_beyond_the_limit_when_the_engine_would_otherwise_idle():
    engine, _ = engine_at_its_program_limit([0.0])
    new = engine.add_request(tokens(30, 5), PARAMS, trace_id="c")
    engine.step()  # nothing else runs or waits: admission never leaves the engine idle
    assert new.status is ReqStatus.DECODING
    results = run_checked(engine)
    assert results[new.rid].output_ids == engine.model.reference(new.prompt_ids, PARAMS.max_new_tokens)


def test_faults_in_calls_running_ahead_end_them_alone_and_leave_nothing_held():
    """Three held-back programs run their first calls ahead: one fails in its prefill pass (a poisoned
    token, in a pass it shares), one is aborted, and the third's trace ends while it runs. Each ends
    alone, the running programs' pins stay, every other output is the model's, and nothing is held."""
    model = FakeModel(FakeConfig(vocab_size=128))
    prompts = {"d": tokens(30, 8), "e": tokens(30, 9)}
    others = [tokens(100, 1), tokens(30, 2), tokens(30, 3), tokens(10, 4), *prompts.values()]
    culprit, poison = culprit_for_prefill(model, others, BUSY.max_new_tokens)
    engine, _ = engine_at_its_program_limit([0.0], PoisonedModel(model, poison))
    busy = engine.add_request(tokens(10, 4), BUSY)
    engine.step()
    bad = engine.add_request(culprit, PARAMS, trace_id="c")
    aborted, ended = (engine.add_request(p, PARAMS, trace_id=t) for t, p in prompts.items())
    results = {r.rid: r for r in engine.step()}  # the culprit fails in this pass, alone
    engine.check_integrity()
    assert engine.stats.calls_run_ahead == 3
    engine.abort(aborted.rid)
    engine.end_trace("e")
    results |= run_checked(engine)
    assert results[bad.rid].finish_reason is FinishReason.ERROR and "PoisonError" in results[bad.rid].error
    assert results[ended.rid].output_ids == model.reference(ended.prompt_ids, PARAMS.max_new_tokens)
    assert results[busy.rid].output_ids == model.reference(busy.prompt_ids, BUSY.max_new_tokens)
    assert set(engine.kv.retention.pins) == {"a", "b"}  # no call running ahead took a pin or left one
    for trace_id in ("a", "b", "c", "d"):
        engine.end_trace(trace_id)
    assert_nothing_held(engine)


def test_programs_away_longer_than_the_ttl_do_not_count_against_the_limit():
    clock = [0.0]
    engine, _ = engine_at_its_program_limit(clock)
    path = run_ahead(engine, tokens(30, 5), "c")
    engine.add_request(tokens(10, 4), BUSY)
    engine.step()
    new = engine.add_request(path + [7], PARAMS, trace_id="c")
    engine.step()
    assert new.status is ReqStatus.WAITING
    clock[0] += 31.0  # "a" and "b" never came back nor ended their traces
    engine.step()
    assert engine.traces.started_programs(30.0) == 1 and new.status is not ReqStatus.WAITING
    run_checked(engine)


def test_calls_without_a_trace_are_never_held_back():
    engine, _ = engine_at_its_program_limit([0.0])
    engine.add_request(tokens(10, 4), BUSY)
    engine.step()
    plain = engine.add_request(tokens(30, 6), PARAMS)
    engine.step()
    assert plain.status is not ReqStatus.WAITING
    run_checked(engine)


def test_program_limit_counts_the_shared_prefix_once():
    stats: dict[str, TraceStats] = {}
    traces = TraceTable(lambda: stats, clock=lambda: 0.0)
    assert program_limit(traces, 1000) == sys.maxsize  # nothing known yet
    shared = tokens(100, 7)
    for i in range(2):
        req = Request(shared + tokens(50, 10 + i), PARAMS, trace_id=f"t{i}")
        traces.on_arrival(req)
        req.prefix_len = 100 if i else 0  # the second found the shared prefix cached
        traces.on_admit(req)
        req.output_ids = tokens(8, 20 + i)
        traces.on_finish(req)
    # Before any ended: twice the longest path, all of it counted as the program's own.
    assert traces.expected_working_set() == (2 * 158, 0)
    traces.end("t0")
    traces.end("t1")
    own = ((158 - 0) + (158 - 100)) / 2
    assert traces.expected_working_set() == (own, 50)
    assert program_limit(traces, 1000) == int((1000 - 50) // own)


def test_the_working_set_estimate_follows_the_last_window_of_ended_traces():
    """The estimate keeps running sums of the window: once traces leave it, the means are still those
    of the newest WINDOW ended traces."""
    from radixlm.engine.traces import WINDOW

    stats: dict[str, TraceStats] = {}
    traces = TraceTable(lambda: stats, clock=lambda: 0.0)
    rng = random.Random(5)
    ended = []
    for i in range(WINDOW + 37):
        own, shared = rng.randint(1, 40), rng.randint(0, 20)
        req = Request(tokens(shared + own, i % 50), PARAMS, trace_id=f"t{i}")
        traces.on_arrival(req)
        req.prefix_len = shared
        traces.on_admit(req)
        traces.on_finish(req)
        traces.end(f"t{i}")
        ended.append((len(req.fill_ids) - shared, shared))
    window = ended[-WINDOW:]
    assert traces.expected_working_set() == pytest.approx(
        (sum(o for o, _ in window) / WINDOW, sum(s for _, s in window) / WINDOW))


def test_outputs_and_integrity_hold_under_program_admission_on_a_tiny_pool():
    """Many interleaved agents on a pool that holds two of them: admission holds programs back, pins
    come and go, and every output still equals the model's own greedy continuation."""
    engine = make_engine(kv_cache_tokens=160, policy="program")
    rng = random.Random(3)
    paths = {f"a{i}": tokens(rng.randrange(20, 40), 200 + i) for i in range(8)}
    for step in range(3):
        reqs = {name: engine.add_request(path, PARAMS, trace_id=name) for name, path in paths.items()}
        results = run_checked(engine)
        for name, req in reqs.items():
            out = results[req.rid].output_ids
            assert out == engine.model.reference(req.prompt_ids, PARAMS.max_new_tokens)
            paths[name] = paths[name] + out + tokens(3, 300 + step)
    for name in paths:
        engine.end_trace(name)
    engine.check_integrity()
    assert not engine.kv.retention.pins


def test_expected_remaining_tool_time_is_the_mean_residual_of_the_observed_tools():
    stats: dict[str, TraceStats] = {}
    now = [0.0]
    traces = TraceTable(lambda: stats, clock=lambda: now[0])
    assert traces.expected_remaining_tool_seconds("t", 0.25) == 0.75  # the default less the time away
    for gap in (1.0, 3.0):  # two tools observed on trace "t"
        req = Request([1, 2, 3], PARAMS, trace_id="t")
        traces.on_arrival(req)
        traces.on_finish(req)
        now[0] += gap
    traces.on_arrival(Request([1, 2, 3], PARAMS, trace_id="t"))
    assert traces.expected_remaining_tool_seconds("t", 0.5) == pytest.approx(((1 - 0.5) + (3 - 0.5)) / 2)
    assert traces.expected_remaining_tool_seconds("t", 2.0) == pytest.approx(1.0)  # only the 3 s tool ran longer
    assert traces.expected_remaining_tool_seconds("t", 4.0) == 4.0  # longer than any: as long again
    assert traces.expected_remaining_tool_seconds("other", 2.5) == pytest.approx(0.5)  # every trace's tools


def test_pressure_releases_the_pin_of_the_agent_expected_back_last():
    """Both agents' tools took 1 s, then 3 s. One left 2.9 s ago (back in ~0.1 s if its tools run as
    before), the other 0.1 s ago (back in ~1.9 s): pressure takes the second one's pin. (The mean
    tool time less the time away would keep the second and drop the agent about to return.)"""
    engine = make_engine(kv_cache_tokens=300)
    now = [0.0]
    engine.traces.clock = engine.kv.retention.clock = lambda: now[0]
    paths = {name: tokens(30, seed) for name, seed in (("returning", 8), ("leaving", 9))}
    for when, name in ((0.0, "returning"), (1.0, "returning"), (2.8, "leaving"), (3.8, "leaving"),
                       (4.0, "returning"), (6.8, "leaving")):
        now[0] = when
        paths[name] = paths[name] + call(engine, paths[name], name).output_ids + [5]
    now[0] = 6.9
    need = engine.kv.pool.allocator.available + engine.kv.cache.evictable_size + 10
    engine.add_request(tokens(need, 10), SamplingParams(max_new_tokens=1))
    engine.step()
    assert set(engine.kv.retention.pins) == {"returning"}
    run_checked(engine)


def test_the_pin_budget_depends_on_the_policy_unless_configured():
    assert pinned_share(None, "program") == 1.0
    assert pinned_share(None, "lpm") == DEFAULT_PINNED_SHARE == 0.5
    assert pinned_share(0.3, "program") == 0.3
    assert make_engine(policy="program").kv.retention.max_share == 1.0
    assert make_engine().kv.retention.max_share == 0.5
