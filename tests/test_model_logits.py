"""Logit parity of our LlamaModel with HF transformers on tiny random-weight Llama3/Qwen2/Qwen3 models,
through every way the engine drives it: prefill, extend over a cached prefix, mixed extend batches,
and padded batched decode."""

from __future__ import annotations

import pytest
import torch
from model_harness import KINDS, Pair, assert_close, build, decode_batch, extend, greedy_decode, hf_logits, new_pool, prefill

from radixlm.engine.model.config import ModelConfig, UnsupportedModelError

ATOL = 1e-4


@pytest.fixture(scope="module", params=KINDS)
def pair(request: pytest.FixtureRequest) -> Pair:
    return build(request.param, seed=KINDS.index(request.param))


def rand_ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (n,), generator=g)


def test_prefill_matches_hf(pair: Pair) -> None:
    ids = rand_ids(40, 1)
    logits, slots = prefill(pair.ours, new_pool(pair.cfg), ids)
    assert len(slots) == 40
    assert_close(logits, hf_logits(pair.hf, ids), ATOL)


@pytest.mark.parametrize("split", [1, 17, 39])
def test_extend_over_cached_prefix(pair: Pair, split: int) -> None:
    ids = rand_ids(40, 2)
    pool = new_pool(pair.cfg)
    head, slots = prefill(pair.ours, pool, ids[:split])
    (tail,), _ = extend(pair.ours, pool, [(slots, ids[split:])])
    ref = hf_logits(pair.hf, ids)
    assert_close(head, ref[:split], ATOL)
    assert_close(tail, ref[split:], ATOL)


def test_mixed_extend_batch(pair: Pair) -> None:
    """Three sequences in ONE extend call: fresh, suffix over a cached prefix, and a single new token."""
    pool = new_pool(pair.cfg)
    a, b, c = rand_ids(23, 3), rand_ids(35, 4), rand_ids(9, 5)
    _, b_slots = prefill(pair.ours, pool, b[:20])
    _, c_slots = prefill(pair.ours, pool, c[:8])
    logits, slots = extend(pair.ours, pool, [(torch.empty(0, dtype=torch.int64), a), (b_slots, b[20:]), (c_slots, c[8:])])
    assert [len(s) for s in slots] == [23, 35, 9]
    assert_close(logits[0], hf_logits(pair.hf, a), ATOL)
    assert_close(logits[1], hf_logits(pair.hf, b)[20:], ATOL)
    assert_close(logits[2], hf_logits(pair.hf, c)[8:], ATOL)


def test_batched_decode_matches_hf(pair: Pair) -> None:
    """4 sequences of different lengths decoded together 8 steps (padded kv_index) vs HF one by one."""
    steps = 8
    prompts = [rand_ids(n, 10 + n).tolist() for n in (5, 17, 11, 30)]
    tokens, step_logits = greedy_decode(pair.ours, new_pool(pair.cfg), prompts, steps)
    for p, toks, logits in zip(prompts, tokens, step_logits):
        assert len(toks) == len(p) + steps + 1
        ref = hf_logits(pair.hf, toks[:-1])[len(p) - 1 :]
        assert_close(torch.stack(logits), ref, ATOL)


def test_decode_with_equal_lengths_unmasked(pair: Pair) -> None:
    """Rows of equal length take the kv_mask=None path; check it against HF too."""
    pool = new_pool(pair.cfg)
    prompts = [rand_ids(12, 20), rand_ids(12, 21)]
    slots = [prefill(pair.ours, pool, p)[1] for p in prompts]
    logits, _ = decode_batch(pair.ours, pool, slots, [7, 99])
    for b, p in enumerate(prompts):
        ref = hf_logits(pair.hf, torch.cat([p, torch.tensor([[7, 99][b]])]))[-1:]
        assert_close(logits[b : b + 1], ref, ATOL)


def test_unsupported_model_type() -> None:
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        ModelConfig.from_dict({"model_type": "gpt_neox", "vocab_size": 8, "hidden_size": 8})
