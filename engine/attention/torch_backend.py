"""Reference attention backend in plain torch (CPU and GPU): SDPA over K/V gathered from the pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.context import ForwardContext, ForwardMode


# Below this many slots shared by every row, one gather per row costs less than the split.
CASCADE_MIN_SHARED = 32


class TorchAttention:
    """An `AttentionBackend`: writes new tokens' K/V into the pool, then attends over each sequence's
    slots with SDPA."""

    name = "torch"

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """q: [T, heads, dim]; k, v: [T, kv_heads, dim] for the T new tokens. Returns [T, heads, dim]."""
        ctx.pool.write(layer, ctx.out_slots, k, v)
        if ctx.mode is ForwardMode.DECODE:
            return self._decode(layer, q, ctx)
        return self._extend(layer, q, k, v, ctx)

    def _extend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        out = torch.empty_like(q)
        start = 0
        kbuf, vbuf = ctx.pool.k[layer], ctx.pool.v[layer]
        batched_singles = ctx.singles is not None
        for slots, prefix, n in zip(ctx.seq_slots, ctx.prefix_lens, ctx.extend_lens):
            if n == 1 and batched_singles:
                start += 1
                continue
            qi = q[start : start + n].transpose(0, 1)[None]
            if prefix == 0:
                ki, vi = k[start : start + n], v[start : start + n]
                mask, causal = None, True
            else:
                ki, vi = kbuf[slots], vbuf[slots]
                cols = torch.arange(prefix + n, device=q.device)
                rows = torch.arange(n, device=q.device) + prefix
                mask, causal = cols[None, :] <= rows[:, None], False
            # 4-D inputs: the CPU flash kernel; 3-D ones fall back to the slow math path.
            o = F.scaled_dot_product_attention(
                qi, ki.transpose(0, 1)[None], vi.transpose(0, 1)[None], attn_mask=mask, is_causal=causal, enable_gqa=True
            )
            out[start : start + n] = o[0].transpose(0, 1)
            start += n
        if batched_singles:
            out[ctx.single_rows] = self._decode(layer, q[ctx.single_rows], ctx.singles)
        return out

    def _decode(self, layer: int, q: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if ctx.shared_len >= CASCADE_MIN_SHARED:
            return self._decode_shared_prefix(layer, q, ctx)
        k = ctx.pool.k[layer][ctx.kv_index].transpose(1, 2)
        v = ctx.pool.v[layer][ctx.kv_index].transpose(1, 2)
        o = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=ctx.kv_mask, enable_gqa=True)
        return o.squeeze(2)

    def _decode_shared_prefix(self, layer: int, q: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Decode attention when every row starts with the same `shared_len` slots: the shared K/V are
        read once for the whole batch instead of once per row; only the suffixes are gathered."""
        shared = ctx.shared_len
        kbuf, vbuf = ctx.pool.k[layer], ctx.pool.v[layer]
        kp, vp = kbuf[ctx.kv_index[0, :shared]], vbuf[ctx.kv_index[0, :shared]]
        suffix = ctx.kv_index[:, shared:]
        ks, vs = kbuf[suffix], vbuf[suffix]
        batch, heads, dim = q.shape
        kv_heads = kp.shape[1]
        qg = q.view(batch, kv_heads, heads // kv_heads, dim) * dim**-0.5
        s_prefix = torch.einsum("bkgd,pkd->bkgp", qg, kp)
        s_suffix = torch.einsum("bkgd,bskd->bkgs", qg, ks)
        if ctx.kv_mask is not None:
            s_suffix = s_suffix.masked_fill(~ctx.kv_mask[..., shared:], float("-inf"))
        probs = torch.softmax(torch.cat([s_prefix, s_suffix], dim=-1), dim=-1)
        o = torch.einsum("bkgp,pkd->bkgd", probs[..., :shared], vp)
        o = o + torch.einsum("bkgs,bskd->bkgd", probs[..., shared:], vs)
        return o.reshape(batch, heads, dim)
