"""Exact blocks: float32 weights that are exactly 4-bit blocks (a Q4_1 GGUF's dequantized weights, with
an 8-bit-block head) decode from those blocks in float32 math. The products against plain float32
torch, the pass against the dense float32 pass and against HF, and where it does not apply."""

from __future__ import annotations

import pytest
import torch
from model_harness import (KINDS, PROMPTS, assert_same_greedy_decode, build, extend, greedy_decode, hf_logits,
                           needs_kernel, new_pool, prefill, q4_state)

from radixlm.engine.attention.torch_backend import TorchAttention
from radixlm.engine.model import decode_step
from radixlm.engine.model.llama import LlamaModel
from radixlm.engine.model.precision import Precision
from radixlm.engine.quant.q4 import Q4Weight
from radixlm.engine.quant.q4 import matmul_native as q4_matmul_native
from radixlm.engine.quant.q8 import Q8Weight
from radixlm.engine.quant.q8 import matmul_native as q8_matmul_native

LONG = [(7 * i) % 97 + 3 for i in range(150)]  # keys in three chunks of the native layers' attention


@needs_kernel
@pytest.mark.parametrize("batch", [1, 2, 3, 21])
@pytest.mark.parametrize("size", [64, 192, 576])
def test_exact_products_are_the_float32_products_of_the_blocks_weights(batch: int, size: int) -> None:
    """To float32 rounding (another summation order), and each row's bits are the same alone or in a batch."""
    assert decode_step.block_kernels_available()
    gen = torch.Generator().manual_seed(batch * 1000 + size)
    qw = Q4Weight.quantize(torch.randn(37, size, generator=gen) * 0.1)
    bw = Q8Weight.quantize(torch.randn(41, size, generator=gen))
    x = torch.randn(batch, size, generator=gen, dtype=torch.float64).float()
    for product, weight in ((lambda t: q4_matmul_native(t, qw.packed, qw.d, qw.m, exact=True), qw.dequantize()),
                            (lambda t: q8_matmul_native(t, bw.q, bw.d, exact=True), bw.dequantize())):
        ours = product(x)
        ref = (x.double() @ weight.double().t()).float()
        # float32 sums of `size` products: within a few ulps of the sum of magnitudes
        bound = (x.abs().double() @ weight.abs().double().t()).float() * size * 2**-24 + 1e-30
        assert torch.all((ours - ref).abs() <= bound)
        assert torch.equal(ours, torch.cat([product(x[i: i + 1]) for i in range(batch)]))


def exact_and_dense(kind: str, dtype: torch.dtype | Precision = torch.float32) -> tuple[LlamaModel, LlamaModel, object]:
    state, cfg = q4_state(kind, KINDS.index(kind))
    return (LlamaModel(cfg, state, TorchAttention(), dtype=dtype),
            LlamaModel(cfg, state, TorchAttention(), dtype=dtype, exact_blocks=False), cfg)


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_weights_that_are_exact_blocks_decode_from_them_as_the_dense_float32_pass_does(kind: str) -> None:
    exact, dense, cfg = exact_and_dense(kind)
    assert exact.decode_step is not None and exact.decode_step.exact and exact.decode_step.native_layers
    assert exact.decode_step.matrix(0, "down")[0].dtype == torch.uint8
    assert dense.decode_step is None
    for prompts in (PROMPTS[:1], PROMPTS, [LONG, PROMPTS[1]]):
        assert_same_greedy_decode(exact, dense, cfg, prompts, steps=5, atol=1e-5)


@needs_kernel
def test_exact_blocks_decode_agrees_with_hf() -> None:
    """The decode pass from exact blocks against HF transformers' float32 forward on the same weights."""
    state, cfg = q4_state("llama3", 0)
    pair = build("llama3", 0)
    pair.hf.load_state_dict(state)
    model = LlamaModel(cfg, state, TorchAttention())
    assert model.decode_step is not None and model.decode_step.exact
    tokens, logits = greedy_decode(model, new_pool(cfg), PROMPTS[:1], steps=4)
    ids = tokens[0]  # the prompt and 5 chosen tokens, the last never fed
    ref = hf_logits(pair.hf, ids[:-1])[len(PROMPTS[0]) - 1:]
    torch.testing.assert_close(torch.stack(logits[0]), ref, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_bf16_extend_with_exact_blocks_decode() -> None:
    """Prompts longer than the exact pass's batch limit, so that both prefill in bf16."""
    exact, dense, cfg = exact_and_dense("qwen2", Precision(torch.bfloat16, torch.float32))
    assert exact.decode_step is not None and exact.decode_step.exact
    for prompt in (LONG[:40], LONG[60:]):  # one at a time: the dense float32 decode pass takes batches of 1
        assert_same_greedy_decode(exact, dense, cfg, [prompt], steps=4, atol=1e-5)


def test_weights_that_are_not_blocks_keep_the_dense_pass(caplog: pytest.LogCaptureFixture) -> None:
    pair = build("llama3", 1)
    with caplog.at_level("INFO", logger="radixlm.engine"):
        model = LlamaModel(pair.cfg, pair.hf.state_dict(), TorchAttention())
    assert model.decode_step is None
    if decode_step.block_kernels_available():
        assert "is not exactly 4-bit blocks" in caplog.text


@needs_kernel
def test_a_head_that_is_not_8_bit_blocks_keeps_the_dense_pass() -> None:
    state, cfg = q4_state("qwen3", 2)
    head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    state[head] = state[head] + 1e-3
    with pytest.raises(decode_step.InexactBlocks, match="8-bit blocks"):
        decode_step.DecodeStep(cfg, lambda n: state[n].float(), torch.float32, "q4", False, exact=True)
    assert LlamaModel(cfg, state, TorchAttention()).decode_step is None


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_short_extends_run_as_rows_of_the_exact_pass(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An extend of at most `max_batch` new tokens runs through the exact-blocks pass, one row per token
    with causal attention over its sequence: the same logits and K/V as the dense float32 extend pass,
    for sequences with and without a cached prefix."""
    exact, dense, cfg = exact_and_dense(kind)
    rows = []
    real = decode_step.DecodeStep.__call__
    monkeypatch.setattr(decode_step.DecodeStep, "__call__", lambda self, h, *a: (rows.append(len(h)), real(self, h, *a))[1])
    results = []
    for model in (exact, dense):
        pool = new_pool(cfg)
        first, slots = extend(model, pool, [(torch.empty(0, dtype=torch.int64), PROMPTS[2])])
        both, _ = extend(model, pool, [(slots[0], [5, 6, 7]), (torch.empty(0, dtype=torch.int64), PROMPTS[0])])
        results.append((first, both, pool.k_layers.clone(), pool.v_layers.clone()))
    assert rows == [len(PROMPTS[2]), 3 + len(PROMPTS[0])]  # both extends of `exact`, none of `dense`
    (first, both, k, v), (first_ref, both_ref, k_ref, v_ref) = results
    for ours, ref in zip([*first, *both], [*first_ref, *both_ref]):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, v_ref, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_long_extends_keep_the_dense_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    exact, dense, cfg = exact_and_dense("llama3")
    prompt = LONG[: exact.decode_step.max_batch + 1]
    ref, _ = prefill(dense, new_pool(cfg), prompt)

    def refuse(*_):
        raise AssertionError("a long extend went through the exact pass")

    monkeypatch.setattr(decode_step.DecodeStep, "__call__", refuse)
    logits, _ = prefill(exact, new_pool(cfg), prompt)
    assert torch.equal(logits, ref)
