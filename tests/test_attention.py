"""The torch attention backend's shared-prefix decode path equals the plain per-row gather."""

from __future__ import annotations

import dataclasses

import torch

from radixlm.engine.attention.torch_backend import CASCADE_MIN_SHARED, TorchAttention
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


def test_batched_one_token_extends_equal_one_call_each():
    torch.manual_seed(1)
    pool = KVPool(256, num_layers=1, kv_heads=2, head_dim=8)
    pool.k[0].normal_()
    pool.v[0].normal_()
    seq_slots = [torch.arange(1, 21), torch.arange(30, 45), torch.arange(60, 67), torch.arange(80, 81)]
    prefix_lens = [19, 10, 6, 0]
    ctx = ForwardContext.for_extend(pool, seq_slots, prefix_lens, torch.arange(4))
    assert ctx.singles is not None and ctx.single_rows.tolist() == [0, 6, 7]
    q = torch.randn(8, 4, 8)
    k_new, v_new = pool.k[0][ctx.out_slots].clone(), pool.v[0][ctx.out_slots].clone()
    attention = TorchAttention()
    batched = attention(0, q, k_new, v_new, ctx)
    one_by_one = attention(0, q, k_new, v_new, dataclasses.replace(ctx, singles=None, single_rows=None))
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
