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
    assert sorted(g.rows.shape[1] for g in group_short_extends(seq_slots, prefix_lens, extend_lens)) == [1, 4, 8, 16, 64]
    assert [group_width(n) for n in (1, 2, 3, 5, 8, 9, 17, 33, 64)] == [1, 2, 4, 8, 8, 16, 24, 40, 64]
    assert all(g.shared_len == (shared if g.rows.shape[0] > 1 else 0) for g in group_short_extends(seq_slots, prefix_lens, extend_lens))
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
    assert sorted((g.rows.shape[0], g.shared_len) for g in group_short_extends(seq_slots, prefix_lens, extend_lens)) == [(1, 0), (1, 0), (2, 60), (3, 40)]
    q = torch.randn(sum(extend_lens), 4, 8)
    k_new, v_new = pool.k[0][ctx.out_slots].clone(), pool.v[0][ctx.out_slots].clone()
    grouped = TorchAttention()(0, q, k_new, v_new, ctx)
    torch.testing.assert_close(grouped, _one_call_each(q, ctx), atol=1e-5, rtol=1e-5)
