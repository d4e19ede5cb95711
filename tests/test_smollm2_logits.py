"""Logit and greedy-generation parity of our model with HF transformers on the real SmolLM2-135M."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from model_harness import assert_close, decode_batch, extend, greedy_decode, hf_logits, new_pool, prefill

from radixlm.engine.loader import LoadedModel

pytestmark = pytest.mark.slow
ATOL = 1e-3


def chat_ids(m: LoadedModel, content: str) -> list[int]:
    return m.tokenizer.encode(m.tokenizer.apply_chat_template([{"role": "user", "content": content}]))


def test_prefill_matches_hf(smollm2: LoadedModel, hf_smollm2: Any) -> None:
    ids = chat_ids(smollm2, "What is the capital of France? Answer in one sentence.")
    logits, _ = prefill(smollm2.model, new_pool(smollm2.config), ids)
    assert_close(logits, hf_logits(hf_smollm2, ids), ATOL)


def test_extend_over_cached_prefix(smollm2: LoadedModel, hf_smollm2: Any) -> None:
    ids = chat_ids(smollm2, "Name three primary colors and explain why they are called primary.")
    split = len(ids) // 2
    pool = new_pool(smollm2.config)
    head, slots = prefill(smollm2.model, pool, ids[:split])
    (tail,), _ = extend(smollm2.model, pool, [(slots, ids[split:])])
    ref = hf_logits(hf_smollm2, ids)
    assert_close(head, ref[:split], ATOL)
    assert_close(tail, ref[split:], ATOL)


def test_batched_decode_matches_hf(smollm2: LoadedModel, hf_smollm2: Any) -> None:
    """4 prompts of different lengths decoded together 8 steps (padded kv_index) vs HF one by one."""
    steps = 8
    questions = ["Hi!", "What is 2 + 2?", "Give me a tip for learning to cook pasta at home.",
                 "Explain in simple words how a rainbow forms after the rain, and why it is curved."]
    prompts = [chat_ids(smollm2, q) for q in questions]
    assert len({len(p) for p in prompts}) == 4
    tokens, step_logits = greedy_decode(smollm2.model, new_pool(smollm2.config), prompts, steps)
    for p, toks, logits in zip(prompts, tokens, step_logits):
        ref = hf_logits(hf_smollm2, toks[:-1])[len(p) - 1 :]
        assert_close(torch.stack(logits), ref, ATOL)


def test_greedy_generation_matches_hf_generate(smollm2: LoadedModel, hf_smollm2: Any) -> None:
    max_new = 32
    ids = chat_ids(smollm2, "Write a short story about a robot who learns to paint.")
    eos = smollm2.eos_token_ids
    pool = new_pool(smollm2.config)
    logits, slots = prefill(smollm2.model, pool, ids)
    ours = [int(logits[-1].argmax())]
    while len(ours) < max_new and ours[-1] not in eos:
        logits, (slots,) = decode_batch(smollm2.model, pool, [slots], [ours[-1]])
        ours.append(int(logits[0].argmax()))
    with torch.inference_mode():
        out = hf_smollm2.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                                  do_sample=False, max_new_tokens=max_new)
    ref = out[0, len(ids) :].tolist()
    assert len(ref) >= 20, f"HF stopped after {len(ref)} tokens; pick a prompt with a longer answer"
    assert ours == ref, f"\nours: {smollm2.tokenizer.decode(ours)!r}\nhf:   {smollm2.tokenizer.decode(ref)!r}"
