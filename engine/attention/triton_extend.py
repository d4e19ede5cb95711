"""Triton extend (prefill) attention over the token pool.

Each sequence of a ragged batch adds `extend_len` new tokens on top of `prefix_len` tokens already in
the pool. One program computes one block of a sequence's new tokens for one query head: first over the
cached prefix, read through the slot index (one pool slot per token, in any order), then over the new
tokens themselves, read from the contiguous new K/V with a causal mask. Online softmax in fp32 (exp2,
scores pre-scaled by log2(e)); grouped-query attention maps query head h to kv head h // group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _attend_block(q, k, v, mask, m_i, l_i, acc, qk_scale, PRECISION: tl.constexpr):
    """One online-softmax step: fold the scores of q against one K/V block into (m_i, l_i, acc)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _extend_kernel(
    Q, K, V, KPool, VPool, Out,
    QStart, PrefixStart, PrefixIndex,
    qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_pt, stride_ph, stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    block = tl.program_id(2)
    kv_head = head // GROUP

    q_first = tl.load(QStart + seq)
    n_new = tl.load(QStart + seq + 1) - q_first
    if block * BLOCK_M >= n_new:
        return
    p_first = tl.load(PrefixStart + seq)
    n_prefix = tl.load(PrefixStart + seq + 1) - p_first

    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < n_new
    d_valid = offs_d < HEAD_DIM
    rows = (q_first + offs_m).to(tl.int64)
    q = tl.load(Q + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=m_valid[:, None] & d_valid[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Cached prefix: every new token sees all of it; K/V rows come from the pool through the slot index.
    for start in range(0, n_prefix, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_valid = offs_n < n_prefix
        slots = tl.load(PrefixIndex + p_first + offs_n, mask=n_valid, other=0).to(tl.int64)
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(KPool + slots[:, None] * stride_pt + kv_head * stride_ph + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(VPool + slots[:, None] * stride_pt + kv_head * stride_ph + offs_d[None, :], mask=kv_mask, other=0.0)
        m_i, l_i, acc = _attend_block(q, k, v, n_valid[None, :], m_i, l_i, acc, qk_scale, PRECISION)

    # New tokens: causal among themselves; blocks past this query block's last row are skipped.
    end = tl.minimum(n_new, (block + 1) * BLOCK_M)
    for start in range(0, end, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_valid = offs_n < n_new
        cols = (q_first + offs_n).to(tl.int64)
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(K + cols[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + cols[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        causal = (offs_n[None, :] <= offs_m[:, None]) & n_valid[None, :]
        m_i, l_i, acc = _attend_block(q, k, v, causal, m_i, l_i, acc, qk_scale, PRECISION)

    out = acc / l_i[:, None]
    tl.store(Out + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])


@dataclass
class ExtendMeta:
    """Per-batch index tensors on the device: where each sequence's new tokens and prefix slots start."""

    q_start: torch.Tensor  # [B + 1] int32, offsets of each sequence's new tokens in the flat batch
    prefix_start: torch.Tensor  # [B + 1] int32, offsets into prefix_index
    prefix_index: torch.Tensor  # [sum(prefix_lens)] int64 pool slots of every cached prefix, concatenated
    max_new: int

    @classmethod
    def build(cls, seq_slots: list[torch.Tensor], prefix_lens: list[int], extend_lens: list[int],
              device: torch.device) -> "ExtendMeta":
        def offsets(lens: list[int]) -> torch.Tensor:
            return torch.tensor([0] + lens, dtype=torch.int64).cumsum(0).to(device=device, dtype=torch.int32)

        prefixes = [s[:p].to(device=device, dtype=torch.int64) for s, p in zip(seq_slots, prefix_lens)]
        index = torch.cat(prefixes) if sum(prefix_lens) else torch.zeros(1, dtype=torch.int64, device=device)
        return cls(offsets(extend_lens), offsets(prefix_lens), index, max(extend_lens))


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def extend_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor,
                     v_pool: torch.Tensor, meta: ExtendMeta, block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """q: [T, heads, dim]; k, v: [T, kv_heads, dim] (the new tokens); k_pool, v_pool: [slots, kv_heads, dim].
    Returns [T, heads, dim] in q's dtype."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    heads, dim = q.shape[1:]
    kv_heads = k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not split into {kv_heads} kv heads")
    out = torch.empty_like(q)
    batch = meta.q_start.numel() - 1
    block_m = min(block_m, max(16, triton.next_power_of_2(meta.max_new)))
    grid = (batch, heads, triton.cdiv(meta.max_new, block_m))
    _extend_kernel[grid](
        q, k, v, k_pool, v_pool, out,
        meta.q_start, meta.prefix_start, meta.prefix_index,
        dim**-0.5 * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_pool.stride(0), k_pool.stride(1), out.stride(0), out.stride(1),
        GROUP=heads // kv_heads, HEAD_DIM=dim, BLOCK_D=max(16, triton.next_power_of_2(dim)),
        BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=dot_precision(q.dtype),
    )
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (the default, tf32, would drift ~1e-3 from the reference);
    16-bit inputs use tensor cores either way."""
    return "ieee" if dtype == torch.float32 else "tf32"
