"""Fault isolation on the fake model: a request that fails at validation, at grammar time or inside
the forward pass fails alone; the others finish exactly as without it, and nothing leaks."""

from __future__ import annotations

import threading

import pytest

from fake_model import FakeConfig, FakeModel, run_checked
from fault_injection import (BrokenGrammarBackend, PoisonedModel, culprit_for_decode,
                             culprit_for_prefill)
from radixlm import EngineError
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.engine.request import FinishReason
from radixlm.protocol import SamplingParams
from server_harness import client_for, fake_server, settled_stats

EOS = 0
BUDGET = 12
LONG = 300
OTHERS = [[9, 8, 7, 6, 5, 4], [9, 8, 7, 1, 2], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26]]
PARAMS = SamplingParams(max_new_tokens=BUDGET, ignore_eos=True)


def assert_nothing_held(engine: Engine) -> None:
    engine.check_integrity()
    alloc = engine.kv.pool.allocator
    assert alloc.available + engine.kv.cache.evictable_size == alloc.capacity, "a slot or a lock leaked"
    assert engine.kv.rows.available == engine.kv.table.shape[0], "a request row leaked"


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_a_forward_fault_fails_only_its_request(where):
    find = culprit_for_prefill if where == "prefill" else culprit_for_decode
    culprit, poison = find(FakeModel(), OTHERS, BUDGET)
    engine = Engine(PoisonedModel(FakeModel(), poison), EngineConfig(kv_cache_tokens=2048), eos_token_ids=[EOS])
    reqs = [engine.add_request(p, PARAMS) for p in OTHERS]
    bad = engine.add_request(culprit, PARAMS)
    results = run_checked(engine)
    assert [results[r.rid].output_ids for r in reqs] == [FakeModel().reference(p, BUDGET) for p in OTHERS]
    failed = results[bad.rid]
    assert failed.finish_reason is FinishReason.ERROR
    assert "forward pass failed on this request" in failed.error and "PoisonError" in failed.error
    assert_nothing_held(engine)


def test_a_grammar_fault_fails_only_its_request():
    engine = Engine(FakeModel(), EngineConfig(kv_cache_tokens=2048), eos_token_ids=[EOS])
    engine.grammars = BrokenGrammarBackend  # every constrained request gets a mask that cannot be computed
    from radixlm.protocol import Constraint

    reqs = [engine.add_request(p, PARAMS) for p in OTHERS]
    engine.step()  # the others are decoding when the culprit arrives
    bad = engine.add_request([40, 41, 42], SamplingParams(max_new_tokens=5, constraint=Constraint(regex="a+")))
    results = run_checked(engine)
    assert [results[r.rid].output_ids for r in reqs] == [FakeModel().reference(p, BUDGET) for p in OTHERS]
    assert results[bad.rid].finish_reason is FinishReason.ERROR
    assert "grammar mask or sampler" in results[bad.rid].error
    assert_nothing_held(engine)


def test_a_seeded_request_beside_a_culprit_samples_as_without_it():
    params = SamplingParams(max_new_tokens=BUDGET, ignore_eos=True, temperature=1.0, seed=7)
    alone = Engine(FakeModel(), EngineConfig(kv_cache_tokens=2048), eos_token_ids=[EOS])
    solo = alone.add_request(OTHERS[0], params)
    expected = run_checked(alone)[solo.rid].output_ids
    culprit, poison = culprit_for_prefill(FakeModel(), [OTHERS[0]], BUDGET)
    engine = Engine(PoisonedModel(FakeModel(), poison), EngineConfig(kv_cache_tokens=2048), eos_token_ids=[EOS])
    req = engine.add_request(OTHERS[0], params)
    engine.step()
    bad = engine.add_request(culprit, PARAMS)
    results = run_checked(engine)
    assert results[req.rid].output_ids == expected
    assert results[bad.rid].finish_reason is FinishReason.ERROR


def test_a_chunked_culprit_frees_the_chunks_it_already_computed():
    _, poison = culprit_for_prefill(FakeModel(), OTHERS, BUDGET)
    engine = Engine(PoisonedModel(FakeModel(), poison), EngineConfig(kv_cache_tokens=2048, chunk_size=8), eos_token_ids=[EOS])
    reqs = [engine.add_request(p, PARAMS) for p in OTHERS]
    bad = engine.add_request([t for t in range(1, 40) if t != poison][:29] + [poison], PARAMS)  # fourth chunk
    results = run_checked(engine)
    assert results[bad.rid].finish_reason is FinishReason.ERROR
    assert [results[r.rid].output_ids for r in reqs] == [FakeModel().reference(p, BUDGET) for p in OTHERS]
    assert_nothing_held(engine)


def test_server_streams_survive_a_validation_a_grammar_and_a_forward_culprit(tmp_path):
    """The reproduced bugs: an out-of-vocabulary stop id with min_new_tokens, n=10**9, and faults in
    a step, while four streams decode."""
    wide = FakeConfig(vocab_size=4096)  # long streams that leave tokens no other request computes
    culprit, poison = culprit_for_decode(FakeModel(wide), OTHERS, LONG)
    with fake_server(tmp_path, model=PoisonedModel(FakeModel(wide), poison)) as server:
        server.engine.grammars = BrokenGrammarBackend
        c = client_for(server)
        streamed: dict[int, list[int]] = {}

        def stream(i: int) -> None:
            streamed[i] = [t for ch in c.stream(OTHERS[i], max_new_tokens=LONG, ignore_eos=True) for t in ch.token_ids]

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(OTHERS))]
        for t in threads:
            t.start()
        bad_calls = [
            (dict(stop_token_ids=[10_000_000], min_new_tokens=3), "invalid_request", "stop_token_ids has token id 10000000"),
            (dict(n=10**9), "invalid_request", "n must be in [1, 64]"),
            (dict(temperature=float("nan")), "invalid_request", "temperature"),
            (dict(top_k=10**6), "invalid_request", "top_k"),
            (dict(max_new_tokens=10**9), "invalid_request", "max_new_tokens"),
            (dict(seed=-1), "invalid_request", "seed"),
            (dict(regex="a+"), "request_failed", "grammar mask"),
        ]
        for options, code, words in bad_calls:
            with pytest.raises(EngineError) as err:
                c.generate([40, 41, 42], **{"max_new_tokens": 5, "ignore_eos": True, **options})
            assert (err.value.code, words in err.value.message) == (code, True), (options, err.value)
        with pytest.raises(EngineError) as err:
            list(c.stream(culprit, max_new_tokens=LONG, ignore_eos=True))
        assert err.value.code == "request_failed" and "PoisonError" in err.value.message
        for t in threads:
            t.join(timeout=30)
        assert [streamed[i] for i in range(len(OTHERS))] == [FakeModel(wide).reference(p, LONG) for p in OTHERS]
        stats = settled_stats(c)
        assert stats["integrity"] == "ok" and stats["running"] == 0 and stats["waiting"] == 0
        assert stats["pool_free"] + stats["cache_evictable"] == stats["pool_capacity"]
        c.close()


@pytest.mark.parametrize("cfg", [dict(kv_cache_tokens=2048, chunk_size=8), dict(kv_cache_tokens=40, reserve_clip=1)])
def test_a_forced_run_longer_than_the_chunk_or_the_free_kv_is_split_not_skipped(cfg):
    """Jump-forward appends grammar-forced tokens to be computed later; a run of 24 of them cannot
    fit one pass here, so it is computed in parts and the request goes on exactly as the model says."""
    model = FakeModel()
    engine = Engine(model, EngineConfig(**cfg), eos_token_ids=[EOS])
    prompt, forced = [3, 1, 4, 1, 5], [7] * 24
    req = engine.add_request(prompt, SamplingParams(max_new_tokens=30, ignore_eos=True))
    engine.step()
    req.output_ids.extend(forced)  # what Decoding._jump_forward does with forced tokens
    results = run_checked(engine)
    first = model.reference(prompt, 1)
    assert results[req.rid].output_ids == first + forced + model.reference(prompt + first + forced, 5)
    assert_nothing_held(engine)


def _decoding_engine() -> tuple[Engine, list]:
    engine = Engine(FakeModel(), EngineConfig(kv_cache_tokens=2048), eos_token_ids=[EOS])
    reqs = [engine.add_request(p, PARAMS) for p in OTHERS[:2]]
    engine.step()
    engine.step()
    engine.check_integrity()
    return engine, reqs


def _leak_lock(engine, reqs):
    engine.kv.cache.lock(reqs[0].prefix_node)


def _lose_lock(engine, reqs):
    engine.kv.cache.unlock(reqs[0].prefix_node)
    engine.kv.cache.lock(engine.kv.cache.root)


def _wrong_prefix_slot(engine, reqs):
    engine.kv.table[reqs[0].row, 0] += 1


def _leak_row(engine, reqs):
    engine.kv.rows.alloc()


def _waiting_holds_row(engine, reqs):
    extra = engine.add_request([50, 51], PARAMS)
    extra.row = engine.kv.rows.alloc()


@pytest.mark.parametrize("corrupt", [_leak_lock, _lose_lock, _wrong_prefix_slot, _leak_row, _waiting_holds_row])
def test_each_integrity_check_fires(corrupt):
    from radixlm.engine.radix_cache import IntegrityError

    engine, reqs = _decoding_engine()
    assert reqs[0].prefix_len > 0, "the request holds a tree path"
    corrupt(engine, reqs)
    with pytest.raises(IntegrityError):
        engine.check_integrity()


def test_a_reply_that_cannot_be_built_fails_only_its_request(tmp_path):
    """The server's own per-request work (incremental text of a stream) is contained too."""
    _, poison = culprit_for_prefill(FakeModel(), OTHERS, BUDGET)
    with fake_server(tmp_path) as server:
        real = server.engine.detokenizer.decode

        def decode(ids, skip_special_tokens=True):
            if poison in ids:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected fault")
            return real(ids, skip_special_tokens)

        server.engine.detokenizer.decode = decode
        c = client_for(server)
        good = OTHERS[0]  # computes no poison token
        bad_prompt = next(p for p in ([a, b] for a in range(1, 64) for b in range(1, 64))
                          if poison in FakeModel().reference(p, 3) and poison not in p)
        with pytest.raises(EngineError) as err:
            list(c.stream(bad_prompt, max_new_tokens=3, ignore_eos=True))
        assert err.value.code == "request_failed" and "UnicodeDecodeError" in err.value.message
        assert c.generate(good, max_new_tokens=BUDGET, ignore_eos=True).output_ids == FakeModel().reference(good, BUDGET)
        stats = settled_stats(c)
        assert stats["integrity"] == "ok" and stats["pool_free"] + stats["cache_evictable"] == stats["pool_capacity"]
        c.close()


def test_a_failure_no_request_can_be_blamed_for_fails_all_and_the_engine_recovers(monkeypatch):
    engine = Engine(FakeModel(), EngineConfig(kv_cache_tokens=2048), eos_token_ids=[EOS])
    reqs = [engine.add_request(p, PARAMS) for p in OTHERS]
    engine.step()
    engine.step()

    def broken(*args, **kwargs):
        raise RuntimeError("injected engine bug")

    monkeypatch.setattr(engine.scheduler, "finish_step", broken)
    results = {r.rid: r for r in engine.step()}
    assert set(results) == {r.rid for r in reqs}
    assert all(r.finish_reason is FinishReason.ERROR and "injected engine bug" in r.error for r in results.values())
    assert_nothing_held(engine)
    again = engine.add_request(OTHERS[0], PARAMS)
    assert run_checked(engine)[again.rid].output_ids == FakeModel().reference(OTHERS[0], BUDGET)
