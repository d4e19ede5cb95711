"""Each bound checked at the door: the last accepted value passes, the first rejected one fails with
a ValueError naming the field, and nothing is allocated for a rejected request."""

from __future__ import annotations

import math

import pytest

from fake_model import FakeModel
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.protocol import SamplingParams
from radixlm.engine.validation import MAX_N, MAX_STOP_CHARS, MAX_STOPS, SEED_RANGE, check_n

CONTEXT, POOL = 100, 80
VOCAB = FakeModel().cfg.vocab_size


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(FakeModel(), EngineConfig(max_context=CONTEXT, kv_cache_tokens=POOL), eos_token_ids=[0])


BOUNDS = [  # (what, accepted, rejected, words in the message)
    ("prompt ids", dict(prompt=[VOCAB - 1]), dict(prompt=[VOCAB]), "outside the vocabulary"),
    ("negative id", dict(prompt=[0]), dict(prompt=[-1]), "outside the vocabulary"),
    ("prompt vs pool", dict(prompt=[1] * (POOL - 1)), dict(prompt=[1] * POOL), "KV pool holds"),
    ("max_new_tokens", dict(max_new_tokens=POOL), dict(max_new_tokens=POOL + 1), "max_new_tokens"),
    ("stop id", dict(stop_token_ids=(VOCAB - 1,)), dict(stop_token_ids=(VOCAB,)), "stop_token_ids"),
    ("stop id count", dict(stop_token_ids=(1,) * MAX_STOPS), dict(stop_token_ids=(1,) * (MAX_STOPS + 1)), "at most"),
    ("stop length", dict(stop=("x" * MAX_STOP_CHARS,)), dict(stop=("x" * (MAX_STOP_CHARS + 1),)), "stop string"),
    ("top_k", dict(top_k=VOCAB), dict(top_k=VOCAB + 1), "top_k"),
    ("seed high", dict(seed=SEED_RANGE[1]), dict(seed=SEED_RANGE[1] + 1), "seed"),
    ("seed low", dict(seed=0), dict(seed=-1), "seed"),
    ("temperature", dict(temperature=1e30), dict(temperature=math.inf), "temperature"),
    ("temperature nan", dict(temperature=0.5), dict(temperature=math.nan), "temperature"),
    ("top_p nan", dict(top_p=0.5), dict(top_p=math.nan), "top_p"),
    ("penalty", dict(repetition_penalty=2.0), dict(repetition_penalty=math.inf), "repetition_penalty"),
]


@pytest.mark.parametrize("what, good, bad, words", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_each_bound(engine, what, good, bad, words):
    free = engine.kv.pool.allocator.available
    for options, ok in ((good, True), (bad, False)):
        options = dict(options)
        prompt = options.pop("prompt", [1, 2, 3])
        params = SamplingParams(**{"max_new_tokens": 4, **options})
        if ok:
            req = engine.add_request(prompt, params)
            assert engine.abort(req.rid) is not None
        else:
            with pytest.raises(ValueError, match=words):
                engine.add_request(prompt, params)
    assert not engine.has_work() and engine.kv.pool.allocator.available == free
    engine.check_integrity()


def test_prompt_vs_context():
    small = Engine(FakeModel(), EngineConfig(max_context=10, kv_cache_tokens=1000), eos_token_ids=[0])
    small.add_request([1] * 9, SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match="the context holds 10"):
        small.add_request([1] * 10, SamplingParams(max_new_tokens=4))


def test_n_bound_is_checked_before_anything_per_sample_is_built():
    check_n(MAX_N, stream=False)
    for n in (0, MAX_N + 1, 10**9):
        with pytest.raises(ValueError, match="n must be in"):
            check_n(n, stream=False)
    with pytest.raises(ValueError, match="streaming supports n = 1"):
        check_n(2, stream=True)
