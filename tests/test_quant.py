"""The decode pass's own weight formats: int8 weight-only quantization, a decode dtype apart from the
extend dtype (`dtype auto`), and the compiled decode step, each against a plain fp32 reference on tiny
random Llama3/Qwen2/Qwen3 models."""

from __future__ import annotations

import pytest
import torch
from model_harness import KINDS, assert_close, assert_same_greedy_decode, build, greedy_decode, new_pool

from radixlm.engine.attention.torch_backend import TorchAttention
from radixlm.engine.engine import EngineConfig
from radixlm.engine.model.decode_step import BATCH_LIMITS
from radixlm.engine.model.llama import LlamaModel
from radixlm.engine.model.precision import Precision, resolve_precision
from radixlm.engine.quant.int8 import Int8Weight, matmul_dequant, matmul_reduce

PROMPTS = [[3, 17, 42, 9, 88, 5], [7, 7, 1], [100, 2, 64, 31, 12, 9, 5, 77, 1, 2]]


def dequantized_state(kind: str, seed: int) -> tuple[dict[str, torch.Tensor], object]:
    """A tiny model's weights with every matrix replaced by its int8 round trip, so that an fp32
    model on them is the exact reference of the int8 decode pass (re-quantizing them is lossless)."""
    pair = build(kind, seed)
    state = {n: Int8Weight.quantize(t).dequantize() if t.dim() == 2 else t for n, t in pair.hf.state_dict().items()}
    return state, pair.cfg


def test_int8_round_trip_error_is_within_half_a_step() -> None:
    w = torch.randn(48, 80)
    qw = Int8Weight.quantize(w)
    assert qw.q.dtype == torch.int8 and qw.q.shape == (48, 80) and qw.scale.shape == (48,)
    assert torch.all((qw.dequantize() - w).abs() <= qw.scale[:, None] / 2 + 1e-6)
    again = Int8Weight.quantize(qw.dequantize())
    assert torch.equal(again.q, qw.q)


def test_int8_matmuls_agree() -> None:
    qw = Int8Weight.quantize(torch.randn(40, 24))
    x = torch.randn(3, 24)
    ref = x @ qw.dequantize().t()
    torch.testing.assert_close(matmul_dequant(x, qw.q, qw.scale), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(matmul_reduce(x, qw.q, qw.scale), ref, atol=1e-4, rtol=1e-4)


def test_int8_rejects_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Int8Weight.quantize(torch.ones(4))


@pytest.mark.parametrize("kind", KINDS)
def test_int8_decode_matches_fp32_on_the_same_weights(kind: str) -> None:
    state, cfg = dequantized_state(kind, KINDS.index(kind))
    ref = LlamaModel(cfg, state, TorchAttention())
    q8 = LlamaModel(cfg, state, TorchAttention(), quantization="int8")
    assert q8.decode_step is not None and q8.decode_step.matrix(0, "qkv")[0].dtype == torch.int8
    assert_same_greedy_decode(q8, ref, cfg, PROMPTS, steps=6)


def test_batches_above_the_decode_pass_limit_take_the_extend_weights() -> None:
    state, cfg = dequantized_state("qwen2", 1)
    ref = LlamaModel(cfg, state, TorchAttention())
    q8 = LlamaModel(cfg, state, TorchAttention(), quantization="int8")
    assert q8.decode_step is not None and q8.decode_step.max_batch == BATCH_LIMITS["int8"]
    prompts = [PROMPTS[i % 3][: 2 + i] for i in range(BATCH_LIMITS["int8"] + 1)]
    ref_tokens, ref_logits = greedy_decode(ref, new_pool(cfg), prompts, steps=3)
    tokens, logits = greedy_decode(q8, new_pool(cfg), prompts, steps=3)
    assert tokens == ref_tokens
    assert_close(torch.stack(logits[0]), torch.stack(ref_logits[0]), 1e-4)


def test_bf16_extend_with_fp32_decode() -> None:
    pair = build("llama3", 0)
    state = pair.hf.state_dict()
    ref = LlamaModel(pair.cfg, state, TorchAttention())
    split = LlamaModel(pair.cfg, state, TorchAttention(), dtype=Precision(torch.bfloat16, torch.float32))
    assert split.dtype == torch.float32 and split.extend_dtype == torch.bfloat16
    assert split.layers[0]["qkv"].dtype == torch.bfloat16
    assert split.decode_step is not None and split.decode_step.matrix(0, "qkv")[0].dtype == torch.float32
    ref_tokens, ref_logits = greedy_decode(ref, new_pool(pair.cfg), PROMPTS[:1], steps=4)
    _, logits = greedy_decode(split, new_pool(pair.cfg), PROMPTS[:1], steps=4)
    for ours, theirs in zip(logits, ref_logits):
        # bf16 prefill K/V feed the fp32 decode steps: agreement to bf16 precision.
        torch.testing.assert_close(torch.stack(ours), torch.stack(theirs), atol=0.05, rtol=0.05)


def test_compiled_int8_decode_matches_eager() -> None:
    state, cfg = dequantized_state("qwen3", 2)
    eager = LlamaModel(cfg, state, TorchAttention(), quantization="int8")
    compiled = LlamaModel(cfg, state, TorchAttention(), quantization="int8", compile_decode=True)
    for prompts in (PROMPTS[:1], PROMPTS[1:2], PROMPTS[:2], PROMPTS):
        assert_same_greedy_decode(compiled, eager, cfg, prompts, steps=4)


def test_dtype_auto_resolution() -> None:
    assert resolve_precision("float32") == Precision(torch.float32, torch.float32)
    assert resolve_precision("bfloat16") == Precision(torch.bfloat16, torch.bfloat16)
    assert resolve_precision("auto", "cuda") == Precision(torch.bfloat16, torch.bfloat16)
    auto = resolve_precision("auto", "cpu")
    assert auto.decode == torch.float32 and auto.extend in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_precision("float8")


@pytest.mark.parametrize("field, value, message", [
    ("quantization", "int3", "unknown quantization 'int3'"),
    ("dtype", "half", "unknown dtype 'half'"),
    ("device", "tpu", "unknown device 'tpu'"),
])
def test_engine_config_rejects_unknown_formats(field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig(**{field: value}).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        EngineConfig(device="cuda").validate()


def test_bf16_prefill_matches_hf_in_bf16() -> None:
    """dtype auto's extend pass in bf16 is as faithful to fp32 as HF transformers run in bf16 (same weights)."""
    from model_harness import hf_logits, prefill

    pair = build("llama3", 0)
    ours = LlamaModel(pair.cfg, pair.hf.state_dict(), TorchAttention(), dtype=Precision(torch.bfloat16, torch.float32))
    ids = torch.tensor(PROMPTS[2])
    logits, _ = prefill(ours, new_pool(pair.cfg), ids)
    exact = hf_logits(pair.hf, ids)
    hf_bf16 = hf_logits(pair.hf.to(torch.bfloat16), ids)
    ours_error, hf_error = float((logits - exact).abs().max()), float((hf_bf16 - exact).abs().max())
    assert ours_error <= 1.5 * hf_error, (ours_error, hf_error)
