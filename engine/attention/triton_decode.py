"""Triton decode attention over the token pool, split along the sequence (flash-decoding).

Stage 1: one program per (row, kv head, split) attends all query heads of that kv head's group (K/V are
read once per group) over its share of the row's slots, read through `kv_index`; it writes the partial
output, already normalized, and its log-sum-exp (base 2). Stage 2: one program per (row, query head)
merges the splits' partial outputs weighted by their softmax mass. With one split per row a long context
runs in one program per kv head, which leaves a large GPU mostly idle at small batch; splitting it keeps
every SM reading the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .triton_extend import LOG2E, dot_precision

MAX_SPLITS = 32


@triton.jit
def _decode_split_kernel(
    Q, KPool, VPool, KvIndex, KvLens, PartOut, PartLse,
    qk_scale, num_splits,
    stride_qb, stride_qh, stride_pt, stride_ph, stride_ib,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    length = tl.load(KvLens + row)
    # Splits are whole blocks long; the last ones may be short or empty.
    split_len = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, length)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    h_valid = offs_h < GROUP
    d_valid = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_h
    q = tl.load(Q + row * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=h_valid[:, None] & d_valid[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_valid = offs_n < end
        slots = tl.load(KvIndex + row * stride_ib + offs_n, mask=n_valid, other=0).to(tl.int64)
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(KPool + slots[:, None] * stride_pt + kv_head * stride_ph + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(VPool + slots[:, None] * stride_pt + kv_head * stride_ph + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # An empty split stores zeros with lse = -inf: stage 2 gives it weight 0.
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.math.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(PartOut + row * stride_ob + heads[:, None] * stride_oh + split * stride_os + offs_d[None, :], out,
             mask=h_valid[:, None] & d_valid[None, :])
    tl.store(PartLse + row * stride_lb + heads * stride_lh + split, lse, mask=h_valid)


@triton.jit
def _decode_reduce_kernel(
    PartOut, PartLse, Out, num_splits,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh, stride_xb, stride_xh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_valid = offs_s < num_splits
    d_valid = offs_d < HEAD_DIM
    lse = tl.load(PartLse + row * stride_lb + head * stride_lh + offs_s, mask=s_valid, other=float("-inf"))
    weight = tl.math.exp2(lse - tl.max(lse, 0))
    part = tl.load(PartOut + row * stride_ob + head * stride_oh + offs_s[:, None] * stride_os + offs_d[None, :],
                   mask=s_valid[:, None] & d_valid[None, :], other=0.0)
    out = tl.sum(weight[:, None] * part, 0) / tl.sum(weight, 0)
    tl.store(Out + row * stride_xb + head * stride_xh + offs_d, out.to(Out.dtype.element_ty), mask=d_valid)


def choose_splits(batch: int, kv_heads: int, max_len: int, num_sms: int, block_n: int = 64) -> int:
    """Enough splits that batch x kv_heads x splits programs cover the GPU about twice, never more than
    the longest row has blocks; a power of two so that few kernel variants get compiled."""
    want = triton.cdiv(2 * num_sms, batch * kv_heads)
    splits = min(want, triton.cdiv(max_len, block_n), MAX_SPLITS)
    return triton.next_power_of_2(max(1, splits)) if splits > 1 else 1


@dataclass
class DecodeMeta:
    """Per-batch decode tensors on the device: the slot index, row lengths, and the split scratch."""

    kv_index: torch.Tensor  # [B, L] pool slots; row b is valid up to kv_lens[b] (>= 1)
    kv_lens: torch.Tensor  # [B] int32
    num_splits: int
    part_out: torch.Tensor  # [B, heads, splits, dim] fp32, stage 1's normalized partial outputs
    part_lse: torch.Tensor  # [B, heads, splits] fp32, their log2-sum-exp2

    @classmethod
    def build(cls, kv_index: torch.Tensor, kv_lens: torch.Tensor, heads: int, dim: int, num_splits: int,
              device: torch.device) -> "DecodeMeta":
        batch = kv_index.shape[0]
        return cls(kv_index.to(device), kv_lens.to(device=device, dtype=torch.int32), num_splits,
                   torch.empty(batch, heads, num_splits, dim, dtype=torch.float32, device=device),
                   torch.empty(batch, heads, num_splits, dtype=torch.float32, device=device))


def decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, meta: DecodeMeta,
                     block_n: int = 64) -> torch.Tensor:
    """q: [B, heads, dim]; k_pool, v_pool: [slots, kv_heads, dim]. Returns [B, heads, dim] in q's dtype."""
    if q.stride(-1) != 1:
        q = q.contiguous()
    batch, heads, dim = q.shape
    kv_heads = k_pool.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not split into {kv_heads} kv heads")
    group = heads // kv_heads
    part_out, part_lse, num_splits = meta.part_out, meta.part_lse, meta.num_splits
    out = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(dim))
    _decode_split_kernel[(batch, kv_heads, num_splits)](
        q, k_pool, v_pool, meta.kv_index, meta.kv_lens, part_out, part_lse,
        dim**-0.5 * LOG2E, num_splits,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), meta.kv_index.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        GROUP=group, HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n, PRECISION=dot_precision(q.dtype),
    )
    _decode_reduce_kernel[(batch, heads)](
        part_out, part_lse, out, num_splits,
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(num_splits),
    )
    return out
