"""Block-quantized decode weights (Q4_1 layers, Q8_0 head): the block formats, the native kernels
against plain torch, and the decode pass with them (eager and compiled) on tiny random
Llama3/Qwen2/Qwen3 models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_harness import (CAN_BUILD, KINDS, PROMPTS, assert_same_greedy_decode, greedy_decode, needs_kernel, new_pool,
                           q4_state)

from radixlm.engine.attention.torch_backend import TorchAttention
from radixlm.engine.model import decode_step
from radixlm.engine.model.llama import LlamaModel
from radixlm.engine.quant.native import block_kernels_available
from radixlm.engine.quant.q4 import Q4Weight, matmul_dequant, matmul_native
from radixlm.engine.quant.q8 import Q8Weight
from radixlm.engine.quant.q8 import matmul_dequant as q8_matmul_dequant
from radixlm.engine.quant.q8 import matmul_native as q8_matmul_native


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 5), pairs=st.integers(1, 4), seed=st.integers(0, 2**16), scale=st.floats(1e-3, 10))
def test_blocks_round_trip_exactly_and_stay_within_half_a_step(rows: int, pairs: int, seed: int, scale: float) -> None:
    w = torch.randn(rows, 64 * pairs, generator=torch.Generator().manual_seed(seed)) * scale
    qw = Q4Weight.quantize(w)
    assert qw.packed.shape == (rows, 32 * pairs) and qw.d.shape == qw.m.shape == (rows, 2 * pairs)
    assert int(qw.codes().max()) <= 15
    step = qw.d.float().repeat_interleave(32, dim=1)
    # half a step from the rounding, plus the float16 rounding of the block's offset
    slack = qw.m.float().abs().repeat_interleave(32, dim=1) * 2**-10 + 1e-6
    assert torch.all((qw.dequantize() - w).abs() <= step / 2 + slack)
    again = Q4Weight.quantize(qw.dequantize())
    assert torch.equal(again.packed, qw.packed) and torch.equal(again.d, qw.d) and torch.equal(again.m, qw.m)


def test_constant_blocks_quantize_to_their_value() -> None:
    w = torch.full((2, 64), 0.25)
    assert torch.equal(Q4Weight.quantize(w).dequantize(), w)


def test_rows_must_be_whole_block_pairs() -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        Q4Weight.quantize(torch.ones(4, 96))
    with pytest.raises(ValueError, match="2-D"):
        Q4Weight.quantize(torch.ones(64))


@needs_kernel
def test_kernel_builds_on_this_cpu() -> None:
    assert block_kernels_available()


@needs_kernel
@pytest.mark.parametrize("batch", [1, 2, 3, 8, 9, 20])
@pytest.mark.parametrize("size", [64, 128, 192, 256, 576])  # 1, 2, 3, 4 and 9 block pairs per row
def test_kernel_matches_plain_torch(batch: int, size: int) -> None:
    assert block_kernels_available()
    gen = torch.Generator().manual_seed(batch * 1000 + size)
    qw = Q4Weight.quantize(torch.randn(37, size, generator=gen) * 0.1)
    x = torch.randn(batch, size, generator=gen)
    ref, ours = matmul_dequant(x, qw.packed, qw.d, qw.m), matmul_native(x, qw.packed, qw.d, qw.m)
    # x is rounded to int8 per block of 32 (as llama.cpp does), so the products agree to ~1%
    assert float((ours - ref).norm() / ref.norm()) < 0.02
    exact = torch.zeros(batch, size)
    exact[:, ::7] = 1.0  # exactly representable in int8 blocks: then the integer dot is exact
    torch.testing.assert_close(matmul_native(exact, qw.packed, qw.d, qw.m),
                               matmul_dequant(exact, qw.packed, qw.d, qw.m), atol=1e-4, rtol=1e-4)


@needs_kernel
def test_kernel_computes_each_row_of_a_batch_as_alone() -> None:
    """Rows beyond 8 take another pass over the weights (8 rows per pass, in blocks of 32 weight rows):
    every row's products are the bits it gets alone, so a batch never changes a row's result."""
    gen = torch.Generator().manual_seed(7)
    qw = Q4Weight.quantize(torch.randn(70, 576, generator=gen) * 0.1)
    bw = Q8Weight.quantize(torch.randn(70, 576, generator=gen) * 0.1)
    x = torch.randn(21, 576, generator=gen)
    for product in (lambda t: matmul_native(t, qw.packed, qw.d, qw.m), lambda t: q8_matmul_native(t, bw.q, bw.d)):
        assert torch.equal(product(x), torch.cat([product(x[i: i + 1]) for i in range(len(x))]))


@needs_kernel
def test_kernel_names_a_shape_mismatch() -> None:
    assert block_kernels_available()
    qw = Q4Weight.quantize(torch.randn(8, 128))
    with pytest.raises(RuntimeError, match="x has 64 columns"):
        torch.ops.radixlm.q4_gemv(torch.randn(1, 64), qw.packed, qw.d, qw.m)


@pytest.mark.parametrize("kind", KINDS)
def test_plain_torch_q4_decode_matches_fp32_on_the_same_weights(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_step, "block_kernels_available", lambda: False)
    state, cfg = q4_state(kind, KINDS.index(kind))
    ref = LlamaModel(cfg, state, TorchAttention())
    q4 = LlamaModel(cfg, state, TorchAttention(), quantization="q4")
    assert q4.decode_step is not None and q4.decode_step.matrix(0, "gate_up")[0].dtype == torch.uint8
    assert_same_greedy_decode(q4, ref, cfg, PROMPTS, steps=5)


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_native_q4_decode_stays_close_to_fp32(kind: str) -> None:
    state, cfg = q4_state(kind, KINDS.index(kind))
    ref = LlamaModel(cfg, state, TorchAttention(), exact_blocks=False)
    q4 = LlamaModel(cfg, state, TorchAttention(), quantization="q4")
    _, ref_logits = greedy_decode(ref, new_pool(cfg), PROMPTS, steps=1)
    _, logits = greedy_decode(q4, new_pool(cfg), PROMPTS, steps=1)
    for ours, theirs in zip(logits, ref_logits):
        ours, theirs = torch.stack(ours), torch.stack(theirs)
        assert float((ours - theirs).norm() / theirs.norm()) < 0.03


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_native_decode_layers_match_the_layer_by_op_pass(kind: str) -> None:
    """`radixlm::q4_decode_layers` (norms, RoPE, attention and residuals in C++) against the same
    layers written op by op in torch on the same native GEMVs: batches of rows with different KV
    lengths, several steps (each step's K/V written by the op is read back by the next)."""
    state, cfg = q4_state(kind, KINDS.index(kind))
    native = LlamaModel(cfg, state, TorchAttention(), quantization="q4", compile_decode=True)
    assert native.decode_step is not None and native.decode_step.native_layers
    assert not native.decode_step.compiled  # nothing left to compile
    by_op = LlamaModel(cfg, state, TorchAttention(), quantization="q4")
    by_op.decode_step.native_layers = False
    long = [(7 * i) % 97 + 3 for i in range(150)]  # keys in three chunks of the op's split attention
    for prompts in (PROMPTS[:1], PROMPTS, [long, PROMPTS[1]]):
        assert_same_greedy_decode(native, by_op, cfg, prompts, steps=4)


def native_step(state: dict, cfg, exact: bool) -> decode_step.DecodeStep:
    """The native decode layers on 4-bit blocks: integer dots (q4) or exact float32 products."""
    step = LlamaModel(cfg, state, TorchAttention(), quantization="none" if exact else "q4").decode_step
    assert step is not None and step.native_layers and step.exact == exact
    return step


@needs_kernel
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("threads", [2, 3])
def test_native_decode_layers_compute_the_same_bits_on_any_number_of_threads(threads: int, exact: bool) -> None:
    """The op splits each phase of a layer over torch's threads, with barriers between phases: a team
    of 2, or of 3 on this machine's cores, computes exactly what one thread does (hidden rows and the
    K/V it writes), for rows with different KV lengths over scattered slots."""
    state, cfg = q4_state("qwen2", 1)
    step = native_step(state, cfg, exact)
    gen = torch.Generator().manual_seed(threads)
    pool = new_pool(cfg, num_slots=400)
    pool.k_layers.copy_(torch.randn(pool.k_layers.shape, generator=gen))
    pool.v_layers.copy_(torch.randn(pool.v_layers.shape, generator=gen))
    lens = torch.tensor([200, 70, 1])
    slots, kv_index = torch.randperm(400, generator=gen), torch.zeros(3, 200, dtype=torch.int64)
    for row, (start, n) in enumerate([(0, 200), (200, 70), (270, 1)]):  # each row's own slots
        kv_index[row, :n] = slots[start: start + n]
    h = torch.randn(3, cfg.hidden_size, generator=gen)
    cos, sin = torch.randn(2, 3, 1, cfg.head_dim, generator=gen)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, threads):
            torch.set_num_threads(n)
            p = new_pool(cfg, num_slots=400)
            p.k_layers.copy_(pool.k_layers), p.v_layers.copy_(pool.v_layers)
            results.append((step._native_layers(h, cos, sin, kv_index, lens, p), p.k_layers, p.v_layers))
    finally:
        torch.set_num_threads(before)
    for one, many in zip(*results):
        assert torch.equal(one, many)
    assert not torch.equal(results[0][1], pool.k_layers)  # the op wrote the new K


@needs_kernel
@pytest.mark.parametrize("exact", [False, True])
def test_native_decode_layers_compute_each_row_of_a_large_batch_as_alone(exact: bool) -> None:
    """Batches past 8 rows (up to `NATIVE_LAYERS_BATCH`) run through the native layers too: each
    row's hidden state and K/V are the bits it gets alone."""
    state, cfg = q4_state("llama3", 3)
    step = native_step(state, cfg, exact)
    assert step.max_batch == decode_step.NATIVE_LAYERS_BATCH > 8
    gen = torch.Generator().manual_seed(11)
    rows, width = 11, 40
    pool = new_pool(cfg, num_slots=rows * width)
    pool.k_layers.copy_(torch.randn(pool.k_layers.shape, generator=gen))
    pool.v_layers.copy_(torch.randn(pool.v_layers.shape, generator=gen))
    kv_index = torch.arange(rows * width).view(rows, width)  # each row's own slots
    lens = torch.randint(1, width + 1, (rows,), generator=gen)
    h = torch.randn(rows, cfg.hidden_size, generator=gen)
    cos, sin = torch.randn(2, rows, 1, cfg.head_dim, generator=gen)
    k_before, v_before = pool.k_layers.clone(), pool.v_layers.clone()
    together = step._native_layers(h, cos, sin, kv_index, lens, pool)
    k_together, v_together = pool.k_layers.clone(), pool.v_layers.clone()
    pool.k_layers.copy_(k_before), pool.v_layers.copy_(v_before)
    alone = torch.cat([step._native_layers(h[r: r + 1], cos[r: r + 1], sin[r: r + 1], kv_index[r: r + 1],
                                           lens[r: r + 1], pool) for r in range(rows)])
    assert torch.equal(together, alone)
    assert torch.equal(k_together, pool.k_layers) and torch.equal(v_together, pool.v_layers)


@needs_kernel
def test_native_decode_layers_name_a_bad_kv_slot() -> None:
    state, cfg = q4_state("llama3", 0)
    step = LlamaModel(cfg, state, TorchAttention(), quantization="q4").decode_step
    pool = new_pool(cfg, num_slots=16)
    h, cos = torch.randn(1, cfg.hidden_size), torch.ones(1, 1, cfg.head_dim)
    with pytest.raises(RuntimeError, match="KV slot 99 outside the pool's 16"):
        step._native_layers(h, cos, cos, torch.tensor([[3, 99]]), torch.tensor([2]), pool)


@needs_kernel
def test_compiled_q4_decode_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer-by-op pass with the native GEMVs (where native layers do not apply), compiled and eager."""
    monkeypatch.setattr(decode_step, "native_layers_apply", lambda *_: False)
    state, cfg = q4_state("qwen3", 2)
    eager = LlamaModel(cfg, state, TorchAttention(), quantization="q4")
    compiled = LlamaModel(cfg, state, TorchAttention(), quantization="q4", compile_decode=True)
    assert compiled.decode_step is not None and compiled.decode_step.compiled
    for prompts in (PROMPTS[:1], PROMPTS):
        assert_same_greedy_decode(compiled, eager, cfg, prompts, steps=4)


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 5), pairs=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_8_bit_blocks_round_trip_exactly(rows: int, pairs: int, seed: int) -> None:
    w = torch.randn(rows, 64 * pairs, generator=torch.Generator().manual_seed(seed))
    bw = Q8Weight.quantize(w)
    assert bw.q.dtype == torch.int8 and bw.d.shape == (rows, 2 * pairs)
    assert torch.all((bw.dequantize() - w).abs() <= bw.d.float().repeat_interleave(32, dim=1) / 2 + 1e-6)
    again = Q8Weight.quantize(bw.dequantize())
    assert torch.equal(again.q, bw.q) and torch.equal(again.d, bw.d)


@needs_kernel
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("size", [64, 192, 576])
def test_8_bit_kernel_matches_plain_torch(batch: int, size: int) -> None:
    assert block_kernels_available()
    gen = torch.Generator().manual_seed(batch + size)
    bw = Q8Weight.quantize(torch.randn(41, size, generator=gen))
    x = torch.randn(batch, size, generator=gen)
    ref, ours = q8_matmul_dequant(x, bw.q, bw.d), q8_matmul_native(x, bw.q, bw.d)
    assert float((ours - ref).norm() / ref.norm()) < 0.01
    exact = torch.zeros(batch, size)
    exact[:, ::5] = -1.0
    torch.testing.assert_close(q8_matmul_native(exact, bw.q, bw.d), q8_matmul_dequant(exact, bw.q, bw.d),
                               atol=1e-4, rtol=1e-4)


@needs_kernel
def test_a_kernel_that_cannot_build_falls_back_to_plain_torch_with_a_warning(
        tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from radixlm.engine.quant import native

    broken = tmp_path / "block_gemv.cpp"
    broken.write_text('#error "this CPU lacks AVX2"\n')
    monkeypatch.setattr(native, "SOURCES", [broken])
    monkeypatch.setattr(native, "cache_root", lambda: tmp_path)
    with caplog.at_level("WARNING", logger="radixlm.engine"):
        assert native.block_kernels_available.__wrapped__() is False
    assert "block-quantized kernels unavailable" in caplog.text and "plain torch" in caplog.text


AVX2_CHECK = """
import sys, torch
from torch.utils.cpp_extension import load
from radixlm.engine.quant import native, q4, q8
load(name="radixlm_block_gemv_avx2_only", sources=[str(p) for p in native.SOURCES], build_directory=sys.argv[1],
     extra_cflags=["-O3", "-march=haswell", "-fopenmp"], is_python_module=False)
worst = worst_exact = 0.0
for size in (64, 192, 576):
    for batch in (1, 3, 8):
        w, x = torch.randn(37, size) * 0.1, torch.randn(batch, size)
        a, b = q4.Q4Weight.quantize(w), q8.Q8Weight.quantize(w)
        for ours, ref in ((q4.matmul_native(x, a.packed, a.d, a.m), q4.matmul_dequant(x, a.packed, a.d, a.m)),
                          (q8.matmul_native(x, b.q, b.d), q8.matmul_dequant(x, b.q, b.d))):
            worst = max(worst, float((ours - ref).norm() / ref.norm()))
        for ours, ref in ((q4.matmul_native(x, a.packed, a.d, a.m, exact=True), q4.matmul_dequant(x, a.packed, a.d, a.m)),
                          (q8.matmul_native(x, b.q, b.d, exact=True), q8.matmul_dequant(x, b.q, b.d))):
            worst_exact = max(worst_exact, float((ours - ref).norm() / ref.norm()))
print(worst, worst_exact)
"""


@needs_kernel
@pytest.mark.skipif(not (CAN_BUILD and Path("/proc/cpuinfo").exists() and "avx2" in Path("/proc/cpuinfo").read_text()),
                    reason="needs a Linux CPU with AVX2")
def test_the_avx2_path_without_avx512_matches_plain_torch(tmp_path) -> None:
    """The kernels built for an AVX2-only CPU (maddubs instead of AVX-512 VNNI, 8-float vectors in the
    exact products), in their own process
    (one library per process may define the radixlm ops)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", AVX2_CHECK, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    worst, worst_exact = map(float, out.stdout.strip().splitlines()[-1].split())
    assert worst < 0.02 and worst_exact < 1e-6
