"""Reference attention backend in plain torch (CPU and GPU): SDPA over K/V gathered from the pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.context import ForwardContext, ForwardMode


class TorchAttention:
    """Writes new tokens' K/V into the pool, then attends over each sequence's slots."""

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
        for slots, prefix, n in zip(ctx.seq_slots, ctx.prefix_lens, ctx.extend_lens):
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
        return out

    def _decode(self, layer: int, q: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        k = ctx.pool.k[layer][ctx.kv_index].transpose(1, 2)
        v = ctx.pool.v[layer][ctx.kv_index].transpose(1, 2)
        o = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=ctx.kv_mask, enable_gqa=True)
        return o.squeeze(2)
