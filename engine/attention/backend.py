"""The attention backend interface the model calls once per layer of every forward pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from ..model.context import ForwardContext


@runtime_checkable
class AttentionBackend(Protocol):
    """Writes a layer's new K/V into the pool at `ctx.out_slots`, then attends each new token over its
    sequence's slots as `ctx` describes them (extend: cached prefix plus causal new tokens; decode:
    one token per row)."""

    name: str  # what `attention_backend` calls it

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """q: [T, heads, dim]; k, v: [T, kv_heads, dim] for the T new tokens, in the pass's dtype (an
        extend's may differ from the pool's: bf16 extends over a float32 pool). Returns [T, heads, dim]."""
