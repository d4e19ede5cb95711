"""Scheduler and engine bookkeeping on a deterministic fake model that reads the real KV pool."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_model import FakeModel, run_checked
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.model.context import ForwardMode
from radixlm.engine.policy import order_waiting
from radixlm.engine.request import FinishReason
from radixlm.protocol import SamplingParams

EOS = 0


def make_engine(model: FakeModel | None = None, **cfg) -> Engine:
    return Engine(model or FakeModel(), EngineConfig(**cfg), eos_token_ids=[EOS])


def shared_prefix_prompts(n: int, prefix_len: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(1, 64) for _ in range(prefix_len)]
    return [prefix + [rng.randrange(1, 64) for _ in range(rng.randrange(3, 15))] for _ in range(n)]


def outputs(engine: Engine, prompts, params) -> list[list[int]]:
    reqs = [engine.add_request(p, params) for p in prompts]
    results = run_checked(engine)
    return [results[r.rid].output_ids for r in reqs]


def test_outputs_match_reference_model():
    model = FakeModel()
    prompts = shared_prefix_prompts(6, 20)
    got = outputs(make_engine(model), prompts, SamplingParams(max_new_tokens=12))
    assert got == [model.reference(p, 12, EOS) for p in prompts]


def test_pool_exhaustion_retracts_and_every_request_finishes_identically():
    prompts = shared_prefix_prompts(12, 10, seed=1)
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    big = make_engine(kv_cache_tokens=10_000)
    small = make_engine(kv_cache_tokens=150, reserve_clip=1)
    assert outputs(small, prompts, params) == outputs(big, prompts, params)
    assert small.stats.retractions > 0
    assert big.stats.retractions == 0
    assert small.kv.pool.allocator.available + small.kv.cache.total_size == 150


def test_chunked_prefill_matches_unchunked():
    prompts = shared_prefix_prompts(5, 30, seed=2)
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    chunked = make_engine(chunk_size=7)
    whole = make_engine(chunk_size=4096)
    assert outputs(chunked, prompts, params) == outputs(whole, prompts, params)
    assert chunked.stats.extend_passes > whole.stats.extend_passes


def test_cache_off_matches_cache_on_and_reuses_nothing():
    prompts = shared_prefix_prompts(8, 40, seed=3)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    on, off = make_engine(), make_engine(radix_cache=False)
    assert outputs(on, prompts, params) == outputs(off, prompts, params)
    assert off.stats.cached_tokens == 0
    assert on.stats.cached_tokens >= 7 * 40
    assert on.stats.computed_tokens < off.stats.computed_tokens


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight", "fcfs"])
def test_policies_agree_on_outputs(policy):
    prompts = shared_prefix_prompts(4, 12, seed=4) + shared_prefix_prompts(4, 18, seed=5)
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    model = FakeModel()
    assert outputs(make_engine(model, policy=policy), prompts, params) == [
        model.reference(p, 5) for p in prompts
    ]


def test_lpm_admits_the_longest_cached_prefix_first():
    engine = make_engine(policy="lpm")
    cached = list(range(1, 40))
    outputs(engine, [cached], SamplingParams(max_new_tokens=1))
    cold = engine.add_request([50, 51, 52, 53], SamplingParams(max_new_tokens=1))
    warm = engine.add_request(cached + [60, 61], SamplingParams(max_new_tokens=1))
    order = order_waiting(engine.scheduler.waiting, "lpm", engine.kv.cache)
    assert order == [warm, cold]
    assert order_waiting(engine.scheduler.waiting, "fcfs", engine.kv.cache) == [cold, warm]
    batch = engine.scheduler.next_batch()
    assert batch.reqs[0] is warm


def test_fully_cached_prompt_still_computes_one_token():
    model = FakeModel()
    engine = make_engine(model)
    prompt = list(range(1, 30))
    first = outputs(engine, [prompt], SamplingParams(max_new_tokens=3, ignore_eos=True))
    before = engine.stats.computed_tokens
    req = engine.add_request(prompt, SamplingParams(max_new_tokens=3, ignore_eos=True))
    result = run_checked(engine)[req.rid]
    assert result.output_ids == first[0]
    assert result.cached_tokens == len(prompt) - 1
    assert engine.stats.computed_tokens > before


def test_next_call_reuses_prompt_and_generated_tokens():
    engine = make_engine()
    prompt = list(range(1, 25))
    out = outputs(engine, [prompt], SamplingParams(max_new_tokens=10, ignore_eos=True))[0]
    follow = prompt + out + [7, 8, 9]
    req = engine.add_request(follow, SamplingParams(max_new_tokens=2))
    result = run_checked(engine)[req.rid]
    assert result.cached_tokens >= len(prompt) + len(out)
    stats = engine.stats_dict()
    assert stats["extend_passes"] >= 2 and stats["decode_passes"] >= 9
    assert stats["extend_seconds"] > 0 and stats["decode_seconds"] > 0
    assert stats["extend_seconds"] + stats["decode_seconds"] == pytest.approx(stats["busy_seconds"])


def test_a_call_admitted_before_the_ghost_pass_still_reuses_the_output():
    engine = make_engine()
    prompt = list(range(1, 25))
    first = engine.add_request(prompt, SamplingParams(max_new_tokens=10, ignore_eos=True))
    finished = []
    while not finished:
        finished = engine.step(allow_ghost_only=False)
        engine.check_integrity()
    out = finished[0].output_ids
    assert finished[0].rid == first.rid and engine.scheduler.only_ghosts_pending()
    # the agent's next call arrives while the finished call's last-token pass is still pending
    req = engine.add_request(prompt + out + [7, 8, 9], SamplingParams(max_new_tokens=2))
    result = run_checked(engine)[req.rid]
    assert result.cached_tokens >= len(prompt) + len(out) - 1


def test_siblings_sharing_an_uncached_prefix_compute_it_once():
    prompts = shared_prefix_prompts(6, 64, seed=6)
    engine = make_engine()
    outputs(engine, prompts, SamplingParams(max_new_tokens=2, ignore_eos=True))
    first_batch_tokens = 64 + 15
    assert engine.stats.cached_tokens >= 5 * 64
    assert engine.stats.computed_tokens <= first_batch_tokens + 5 * 15 + 6 * 2 + 6


def test_eos_and_length_finish_reasons():
    model = FakeModel()
    engine = make_engine(model)
    prompts = [[i, i + 1, i + 2] for i in range(1, 60)]
    got = outputs(engine, prompts, SamplingParams(max_new_tokens=30))
    results = {tuple(p): model.reference(p, 30, EOS) for p in prompts}
    assert got == list(results.values())
    assert any(o[-1] == EOS and len(o) < 30 for o in got), "workload should hit EOS at least once"


def test_abort_frees_the_request_kv():
    engine = make_engine()
    keep = engine.add_request(list(range(1, 20)), SamplingParams(max_new_tokens=50, ignore_eos=True))
    drop = engine.add_request(list(range(30, 50)), SamplingParams(max_new_tokens=50, ignore_eos=True))
    for _ in range(3):
        engine.step()
    aborted = engine.abort(drop.rid)
    assert aborted.finish_reason is FinishReason.ABORT
    engine.check_integrity()
    results = run_checked(engine)
    assert results[keep.rid].completion_tokens == 50
    assert engine.abort("no-such-request") is None


@pytest.mark.parametrize(
    "bad, message",
    [([], "empty"), ([10**6], "vocabulary"), (list(range(1, 60)) * 100, "context")],
)
def test_bad_prompts_are_rejected_with_a_clear_error(bad, message):
    engine = make_engine(max_context=1000)
    with pytest.raises(ValueError, match=message):
        engine.add_request(bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.add_request([1, 2], SamplingParams(max_new_tokens=0))


def test_decode_batches_run_requests_together():
    engine = make_engine()
    for p in shared_prefix_prompts(8, 5, seed=7):
        engine.add_request(p, SamplingParams(max_new_tokens=6, ignore_eos=True))
    sizes = []
    while engine.has_work():
        batch = engine.scheduler.next_batch()
        if batch.mode is ForwardMode.DECODE:
            sizes.append(len(batch.reqs))
        logits, inp = engine._forward(batch)
        engine.scheduler.finish_step(batch, logits[inp.sample_rows].argmax(-1).tolist())
    assert max(sizes) == 8


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    pool=st.integers(60, 400),
    chunk=st.integers(2, 64),
    policy=st.sampled_from(["lpm", "dfs-weight", "fcfs"]),
    cache=st.booleans(),
    n=st.integers(1, 10),
)
def test_random_workloads_match_reference(seed, pool, chunk, policy, cache, n):
    rng = random.Random(seed)
    model = FakeModel()
    trunk = [rng.randrange(1, 64) for _ in range(rng.randrange(0, 30))]
    prompts = [trunk[: rng.randrange(0, len(trunk) + 1)] + [rng.randrange(1, 64) for _ in range(rng.randrange(1, 12))]
               for _ in range(n)]
    max_new = rng.randrange(1, 15)
    engine = make_engine(model, kv_cache_tokens=pool, chunk_size=chunk, policy=policy, radix_cache=cache,
                         reserve_clip=rng.randrange(1, 20))
    got = outputs(engine, prompts, SamplingParams(max_new_tokens=max_new))
    assert got == [model.reference(p, max_new, EOS) for p in prompts]
    assert engine.kv.pool.allocator.available + engine.kv.cache.total_size == pool
