"""Triton attention backend (GPU; runs on CPU tensors under TRITON_INTERPRET=1 for the tests).

Same interface as TorchAttention: `backend(layer, q, k, v, ctx)` writes the new tokens' K/V into the
pool, then runs the extend kernel (cached prefix through the slot index + causal among the new tokens)
or the split-K decode kernel. The index tensors a step needs are built once per ForwardContext and
reused by every layer.

Every sequence of an extend batch goes through the extend kernel, short ones included (the torch
backend's extend groups are not needed here); decode rows each read their own slots, so the
cascade `shared_len` (a bandwidth saving of the torch path) is not used either.
"""

from __future__ import annotations

import torch

from ..model.context import ForwardContext, ForwardMode
from .triton_decode import DecodeMeta, choose_splits, decode_attention
from .triton_extend import ExtendMeta, extend_attention


class TritonAttention:
    """An `AttentionBackend`: writes new tokens' K/V into the pool, then attends with the Triton kernels.

    `decode_splits` fixes the number of sequence splits of decode (tests, CUDA graphs); None chooses
    it per batch from the batch size, the longest row and the number of SMs."""

    name = "triton"

    def __init__(self, decode_splits: int | None = None) -> None:
        if decode_splits is not None and decode_splits < 1:
            raise ValueError(f"decode_splits must be >= 1, got {decode_splits}")
        self.decode_splits = decode_splits
        self._ctx: ForwardContext | None = None
        self._meta: DecodeMeta | ExtendMeta | None = None

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """q: [T, heads, dim]; k, v: [T, kv_heads, dim] for the T new tokens. Returns [T, heads, dim]."""
        pool = ctx.pool
        dtype = pool.k[layer].dtype  # the kernels attend in the pool's dtype
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        pool.write(layer, ctx.out_slots, k, v)
        meta = self._step_meta(ctx, q)
        if isinstance(meta, DecodeMeta):
            return decode_attention(q, pool.k[layer], pool.v[layer], meta)
        return extend_attention(q, k, v, pool.k[layer], pool.v[layer], meta)

    def _step_meta(self, ctx: ForwardContext, q: torch.Tensor) -> DecodeMeta | ExtendMeta:
        """Index tensors of this step on q's device, built on the first layer and reused by the others."""
        if ctx is self._ctx:
            return self._meta
        device = q.device
        if ctx.mode is ForwardMode.DECODE:
            batch, heads, dim = q.shape
            splits = self.decode_splits or choose_splits(batch, ctx.pool.k[0].shape[1], ctx.kv_index.shape[1],
                                                         _num_sms(device))
            meta: DecodeMeta | ExtendMeta = DecodeMeta.build(ctx.kv_index, ctx.kv_lens, heads, dim, splits, device)
        else:
            meta = ExtendMeta.build(ctx.seq_slots, ctx.prefix_lens, ctx.extend_lens, device)
        self._ctx, self._meta = ctx, meta
        return meta


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreted on CPU: programs run one after another, splitting gains nothing
