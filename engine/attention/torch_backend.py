"""Reference attention backend in plain torch (CPU and GPU): SDPA over K/V gathered from the pool."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..model.context import ForwardContext, ForwardMode
from .extend_groups import CASCADE_MIN_SHARED, SHORT_EXTEND_MAX, ExtendGroup, group_short_extends

# Rows of more queries than this attend faster by SDPA over gathered slots than by the split
# (measured on a 2-core AMD EPYC at 30 rows x 240 shared slots: 5.8 / 6.7 ms at 16, 16.7 / 10.9 at 32).
CASCADE_MAX_WIDTH = 16


class TorchAttention:
    """An `AttentionBackend`: writes new tokens' K/V into the pool, then attends over each sequence's
    slots with SDPA in the pool's dtype (an extend's short sequences in groups, built on the first layer
    of a step and reused by the others). A long bf16 extend on CPU attends in bf16 instead (a float32
    pool's K/V rounded to bf16 for it): in radixlm's native kernel where it is built (AVX-512 BF16, no
    AMX), else in SDPA (on AMX tiles: 2.8x its float32 kernel at 1,024 tokens on a 2-core Intel Xeon)."""

    name = "torch"

    def __init__(self) -> None:
        self._ctx: ForwardContext | None = None
        self._groups: list[ExtendGroup] = []

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """q: [T, heads, dim]; k, v: [T, kv_heads, dim] for the T new tokens. Returns [T, heads, dim]."""
        ctx.pool.write(layer, ctx.out_slots, k, v)
        kbuf, vbuf = ctx.pool.k[layer], ctx.pool.v[layer]
        if ctx.mode is ForwardMode.DECODE:
            q = q.to(kbuf.dtype).unsqueeze(1)
            return attend_rows(kbuf, vbuf, q, ctx.kv_index, ctx.kv_mask, ctx.shared_len).squeeze(1)
        out = torch.empty_like(q)
        if ctx is not self._ctx:
            self._ctx, self._groups = ctx, group_short_extends(ctx.seq_slots, ctx.prefix_lens, ctx.extend_lens)
        for g in self._groups:
            o = attend_rows(kbuf, vbuf, q[g.rows].to(kbuf.dtype), g.kv_index, g.mask, g.shared_len)
            out[g.kept_rows] = o.flatten(0, 1)[g.kept].to(out.dtype)
        start = 0
        for slots, prefix, n in zip(ctx.seq_slots, ctx.prefix_lens, ctx.extend_lens):
            if n > SHORT_EXTEND_MAX:
                out[start : start + n] = self._long_extend(kbuf, vbuf, q[start : start + n], k[start : start + n],
                                                           v[start : start + n], slots, prefix)
            start += n
        return out

    @staticmethod
    def _long_extend(kbuf: torch.Tensor, vbuf: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     slots: torch.Tensor, prefix: int) -> torch.Tensor:
        """One sequence's n new tokens (q, k, v: [n, heads, dim]) over its `slots`, causal."""
        n = q.shape[0]
        dtype = q.dtype if q.dtype == torch.bfloat16 and q.device.type == "cpu" else kbuf.dtype
        if prefix > 0:
            k, v = kbuf[slots], vbuf[slots]
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if _native_causal_bf16(q):
            return torch.ops.radixlm.causal_attention_bf16(q, k, v, prefix, q.shape[-1] ** -0.5)
        if prefix == 0:
            mask, causal = None, True
        else:
            cols = torch.arange(prefix + n, device=q.device)
            rows = torch.arange(n, device=q.device) + prefix
            mask, causal = cols[None, :] <= rows[:, None], False
        # 4-D inputs: the CPU flash kernel; 3-D ones fall back to the slow math path.
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                           attn_mask=mask, is_causal=causal, enable_gqa=True)
        return o[0].transpose(0, 1)


def _native_causal_bf16(q: torch.Tensor) -> bool:
    """Whether this extend's attention runs in radixlm's native bf16 kernel (`causal_bf16.cpp`, built on
    CPUs with AVX-512 BF16 and no AMX: 2.6x SDPA's at 1,024 tokens on a 2-core AMD EPYC)."""
    return q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.shape[-1] % 64 == 0 and _causal_bf16_built()


@functools.cache
def _causal_bf16_built() -> bool:
    from ..quant.native import block_kernels_available

    return block_kernels_available() and hasattr(torch.ops.radixlm, "causal_attention_bf16")


def attend_rows(kbuf: torch.Tensor, vbuf: torch.Tensor, q: torch.Tensor, kv_index: torch.Tensor,
                mask: torch.Tensor | None, shared_len: int) -> torch.Tensor:
    """q: [B, n, heads, dim], row b's queries over the pool slots `kv_index[b]` under `mask`
    ([B, 1, n, L]; None: every slot). The first `shared_len` slots are the same in every row.
    Returns [B, n, heads, dim]."""
    if shared_len >= CASCADE_MIN_SHARED and q.shape[1] <= CASCADE_MAX_WIDTH:
        return _attend_rows_shared_prefix(kbuf, vbuf, q, kv_index, mask, shared_len)
    k, v = kbuf[kv_index].transpose(1, 2), vbuf[kv_index].transpose(1, 2)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)


def _attend_rows_shared_prefix(kbuf: torch.Tensor, vbuf: torch.Tensor, q: torch.Tensor, kv_index: torch.Tensor,
                               mask: torch.Tensor | None, shared: int) -> torch.Tensor:
    """`attend_rows` when every row starts with the same `shared` slots: their K/V are read once for
    the whole batch instead of once per row; only the suffixes are gathered."""
    kp, vp = kbuf[kv_index[0, :shared]], vbuf[kv_index[0, :shared]]
    suffix = kv_index[:, shared:]
    ks, vs = kbuf[suffix], vbuf[suffix]
    batch, n, heads, dim = q.shape
    kv_heads = kp.shape[1]
    qg = q.reshape(batch, n, kv_heads, heads // kv_heads, dim) * dim**-0.5
    s_prefix = torch.einsum("bnkgd,pkd->bkgnp", qg, kp)
    s_suffix = torch.einsum("bnkgd,bskd->bkgns", qg, ks)
    if mask is not None:
        s_suffix = s_suffix.masked_fill(~mask[:, :, None, :, shared:], float("-inf"))
    probs = torch.softmax(torch.cat([s_prefix, s_suffix], dim=-1), dim=-1)
    o = torch.einsum("bkgnp,pkd->bnkgd", probs[..., :shared], vp)
    o = o + torch.einsum("bkgns,bskd->bnkgd", probs[..., shared:], vs)
    return o.reshape(batch, n, heads, dim)
