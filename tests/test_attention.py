"""The torch attention backend's batched paths (shared-prefix decode, grouped short extends) equal
the plain per-row computation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from radixlm.engine.attention.extend_groups import CASCADE_MIN_SHARED, group_short_extends, group_width
from radixlm.engine.attention.torch_backend import TorchAttention
from radixlm.engine.kv_pool import KVPool
from radixlm.engine.model.context import ForwardContext


def test_shared_prefix_decode_equals_per_row_decode():
    torch.manual_seed(0)
    pool = KVPool(512, num_layers=1, kv_heads=2, head_dim=8)
    pool.k[0].normal_()
    pool.v[0].normal_()
    shared = torch.arange(1, 1 + CASCADE_MIN_SHARED + 8)
    suffix_lens = [3, 9, 1, 6]
    rows, start = [], 200
    for n in suffix_lens:
        rows.append(torch.cat([shared, torch.arange(start, start + n)]))
        start += n
    kv_lens = torch.tensor([len(r) for r in rows])
    kv_index = torch.zeros(len(rows), int(kv_lens.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        kv_index[i, : len(r)] = r
    ctx = ForwardContext.for_decode(pool, kv_index, kv_lens)
    assert ctx.shared_len == len(shared)
    q = torch.randn(len(rows), 4, 8)
    k_new, v_new = pool.k[0][ctx.out_slots].clone(), pool.v[0][ctx.out_slots].clone()
    attention = TorchAttention()
    cascade = attention(0, q, k_new, v_new, ctx)
    plain = attention(0, q, k_new, v_new, dataclasses.replace(ctx, shared_len=0))
    torch.testing.assert_close(cascade, plain, atol=1e-5, rtol=1e-5)


def _one_call_each(q, ctx):
    """The reference: every sequence's causal attention by SDPA over its own slots, one at a time."""
    out, start = torch.empty_like(q), 0
    for slots, prefix, n in zip(ctx.seq_slots, ctx.prefix_lens, ctx.extend_lens):
        k, v = ctx.pool.k[0][slots], ctx.pool.v[0][slots]
        mask = torch.arange(prefix + n)[None, :] <= torch.arange(prefix, prefix + n)[:, None]
        o = torch.nn.functional.scaled_dot_product_attention(
            q[start : start + n].transpose(0, 1), k.transpose(0, 1).repeat_interleave(2, 0),
            v.transpose(0, 1).repeat_interleave(2, 0), attn_mask=mask)
        out[start : start + n] = o.transpose(0, 1)
        start += n
    return out


@pytest.mark.parametrize("shared", [0, CASCADE_MIN_SHARED + 5])
def test_grouped_short_extends_equal_one_call_each(shared):
    """Sequences of 1, 3, 4, 7, 9, 64 and 65 new tokens, fresh and over cached prefixes, with and
    without a prefix every sequence shares: grouped by padded width, each group one call."""
    torch.manual_seed(1)
    pool = KVPool(1024, num_layers=1, kv_heads=2, head_dim=8)
    pool.k[0].normal_()
    pool.v[0].normal_()
    common = torch.arange(1, 1 + shared)
    own_prefix = [19, 10, 6, 0, 30, 2, 12, 3]
    extend_lens = [1, 3, 4, 7, 9, 64, 65, 1]
    seq_slots, start = [], 100
    for p, n in zip(own_prefix, extend_lens):
        seq_slots.append(torch.cat([common, torch.arange(start, start + p + n)]))
        start += p + n
    prefix_lens = [shared + p for p in own_prefix]
    ends = torch.tensor(extend_lens).cumsum(0) - 1
    ctx = ForwardContext.for_extend(pool, seq_slots, prefix_lens, ends)
    groups = group_short_extends(seq_slots, prefix_lens, extend_lens)
    assert sorted(g.rows.shape[1] for g in groups) == [1, 4, 8, 16, 64]
    assert [group_width(n) for n in (1, 2, 3, 5, 8, 9, 17, 33, 64)] == [1, 2, 4, 8, 8, 16, 24, 40, 64]
    assert all(g.shared_len == (shared if g.rows.shape[0] > 1 else 0) for g in groups)
    total = sum(extend_lens)
    q = torch.randn(total, 4, 8)
    k_new, v_new = pool.k[0][ctx.out_slots].clone(), pool.v[0][ctx.out_slots].clone()
    grouped = TorchAttention()(0, q, k_new, v_new, ctx)
    torch.testing.assert_close(grouped, _one_call_each(q, ctx), atol=1e-5, rtol=1e-5)


def test_short_extends_group_by_shared_prefix():
    """Questions over two subjects' few-shot prefixes: one group per subject, each reading its
    prefix once (shared_len = the subject's prefix), and a sequence sharing nothing on its own."""
    torch.manual_seed(2)
    pool = KVPool(1024, num_layers=1, kv_heads=2, head_dim=8)
    pool.k[0].normal_()
    pool.v[0].normal_()
    subjects = [torch.arange(1, 41), torch.arange(41, 101)]
    seq_slots, prefix_lens, extend_lens, start = [], [], [], 200
    for i, n in enumerate([3, 4, 3, 2, 4, 3]):
        prefix = subjects[i % 2]
        seq_slots.append(torch.cat([prefix, torch.arange(start, start + n)]))
        prefix_lens.append(len(prefix))
        extend_lens.append(n)
        start += n
    seq_slots.append(torch.arange(start, start + 20 + 4))
    prefix_lens.append(20)
    extend_lens.append(4)
    ends = torch.tensor(extend_lens).cumsum(0) - 1
    ctx = ForwardContext.for_extend(pool, seq_slots, prefix_lens, ends)
    groups = group_short_extends(seq_slots, prefix_lens, extend_lens)
    assert sorted((g.rows.shape[0], g.shared_len) for g in groups) == [(1, 0), (1, 0), (2, 60), (3, 40)]
    q = torch.randn(sum(extend_lens), 4, 8)
    k_new, v_new = pool.k[0][ctx.out_slots].clone(), pool.v[0][ctx.out_slots].clone()
    grouped = TorchAttention()(0, q, k_new, v_new, ctx)
    torch.testing.assert_close(grouped, _one_call_each(q, ctx), atol=1e-5, rtol=1e-5)


def _causal_bf16_kernel():
    from radixlm.engine.attention.torch_backend import _causal_bf16_built

    if not _causal_bf16_built():
        pytest.skip("the native bf16 attention kernel is built on CPUs with AVX-512 BF16 and no AMX only")
    return torch.ops.radixlm.causal_attention_bf16


def _causal_sdpa(q, k, v, prefix, dtype):
    """SDPA in `dtype` over the same bf16 values, new token i attending keys 0 .. prefix + i."""
    mask = torch.arange(k.shape[0])[None, :] <= torch.arange(prefix, prefix + q.shape[0])[:, None]
    q4, k4, v4 = (t.to(dtype).transpose(0, 1)[None] for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1)


@pytest.mark.parametrize(("n", "prefix", "heads", "kv_heads", "dim"), [
    (1, 0, 9, 3, 64), (7, 0, 9, 3, 64), (65, 0, 9, 3, 64), (130, 61, 9, 3, 64), (200, 700, 9, 3, 64),
    (70, 3, 32, 8, 128), (33, 100, 4, 4, 64), (9, 0, 2, 1, 256)])
def test_native_causal_bf16_equals_sdpa(n, prefix, heads, kv_heads, dim):
    """The native kernel is as close to float32 attention as SDPA's own bf16 kernel: block edges of
    64 keys, rows past a task's 24 query vectors, GQA groups of 1-4 heads, dims 64-256."""
    kernel = _causal_bf16_kernel()
    torch.manual_seed(n + prefix)
    q = torch.randn(n, heads, dim).bfloat16()
    k, v = torch.randn(prefix + n, kv_heads, dim).bfloat16(), torch.randn(prefix + n, kv_heads, dim).bfloat16()
    ref = _causal_sdpa(q, k, v, prefix, torch.float32)
    sdpa_bf16 = _causal_sdpa(q, k, v, prefix, torch.bfloat16)
    ours = kernel(q, k, v, prefix, dim ** -0.5)
    assert ours.dtype == torch.bfloat16 and ours.shape == q.shape
    assert (ours.float() - ref).abs().max() <= 1.5 * (sdpa_bf16.float() - ref).abs().max() + 1e-3


def _bf16_long_extend_over_float32_pool(seed: int):
    """A bf16 extend of 100 new tokens over 40 cached ones in a float32 pool, through the backend:
    returns q, the output, and the pool's K/V of the sequence (after the write) rounded to bf16."""
    torch.manual_seed(seed)
    pool = KVPool(256, num_layers=1, kv_heads=3, head_dim=64)
    pool.k[0].normal_()
    pool.v[0].normal_()
    slots = torch.arange(10, 150)
    ctx = ForwardContext.for_extend(pool, [slots], [40], torch.tensor([99]))
    q = torch.randn(100, 9, 64).bfloat16()
    k_new, v_new = torch.randn(100, 3, 64).bfloat16(), torch.randn(100, 3, 64).bfloat16()
    out = TorchAttention()(0, q, k_new, v_new, ctx)
    assert torch.equal(pool.k[0][slots[40:]], k_new.float())  # the new K/V are written in float32
    return q, out, pool.k[0][slots].bfloat16(), pool.v[0][slots].bfloat16()


def test_bf16_long_extend_over_float32_pool_attends_in_the_kernel():
    """Where the native kernel is built, the backend attends in it over the pool's K/V rounded to bf16."""
    kernel = _causal_bf16_kernel()
    q, out, k, v = _bf16_long_extend_over_float32_pool(3)
    assert torch.equal(out, kernel(q, k, v, 40, 0.125))


def test_bf16_long_extend_over_float32_pool_attends_in_bf16_sdpa_without_the_kernel(monkeypatch):
    """Where the native kernel is not built (CPUs with AMX, or none at all), the same extend attends in
    SDPA's bf16 kernel over the pool's K/V rounded to bf16, not in float32."""
    from radixlm.engine.attention import torch_backend

    monkeypatch.setattr(torch_backend, "_native_causal_bf16", lambda q: False)
    q, out, k, v = _bf16_long_extend_over_float32_pool(4)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, _causal_sdpa(q, k, v, 40, torch.bfloat16))
