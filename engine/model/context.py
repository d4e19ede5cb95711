"""The per-step attention context: what one forward pass needs to know besides ids and positions.

The engine builds one ForwardContext per step and installs it with `use_context`; the attention
backend reads it through `current_context()`, so `model.forward(ids, positions)` stays small.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Iterator

import torch

from ..kv_pool import KVPool


class ForwardMode(Enum):
    EXTEND = "extend"
    DECODE = "decode"


@dataclass
class ForwardContext:
    """Attention metadata for one batch.

    EXTEND: sequence i contributes `extend_lens[i]` new tokens (contiguous in the flat batch) on top of
    `prefix_lens[i]` tokens already in the pool; `seq_slots[i]` holds the kv slots of all its
    `prefix_lens[i] + extend_lens[i]` tokens.
    DECODE: one new token per sequence; `kv_index[b, :kv_lens[b]]` are its kv slots (padded with the
    scratch slot 0) and `kv_mask` masks the padding (None when no row is padded). The first
    `shared_len` slots are the same in every row (a prefix all sequences share in the radix tree).
    """

    mode: ForwardMode
    pool: KVPool
    out_slots: torch.Tensor
    logit_rows: torch.Tensor
    seq_slots: list[torch.Tensor] | None = None
    prefix_lens: list[int] | None = None
    extend_lens: list[int] | None = None
    kv_index: torch.Tensor | None = None
    kv_lens: torch.Tensor | None = None
    kv_mask: torch.Tensor | None = None
    shared_len: int = 0

    @classmethod
    def for_extend(
        cls, pool: KVPool, seq_slots: list[torch.Tensor], prefix_lens: list[int], logit_rows: torch.Tensor
    ) -> "ForwardContext":
        """Context for an extend batch; new tokens' slots are the tail of each sequence's slots."""
        extend_lens = [len(s) - p for s, p in zip(seq_slots, prefix_lens)]
        out_slots = torch.cat([s[p:] for s, p in zip(seq_slots, prefix_lens)])
        return cls(ForwardMode.EXTEND, pool, out_slots, logit_rows, seq_slots, prefix_lens, extend_lens)

    def token_rows(self) -> "ForwardContext":
        """This extend batch as a decode batch of one row per new token, in the flat batch's order:
        token j of sequence i attends over the sequence's first prefix_lens[i] + j + 1 slots (its own
        slot last, which receives its K/V), so the rows compute the extend's causal attention."""
        assert self.mode is ForwardMode.EXTEND and self.seq_slots is not None
        lens = torch.tensor([p + j + 1 for p, n in zip(self.prefix_lens, self.extend_lens) for j in range(n)])
        index = torch.zeros(len(lens), int(lens.max()), dtype=torch.long, device=self.out_slots.device)
        row = 0
        for slots, p, n in zip(self.seq_slots, self.prefix_lens, self.extend_lens):
            for j in range(n):
                index[row, : p + j + 1] = slots[: p + j + 1]
                row += 1
        rows = self.for_decode(self.pool, index, lens)
        rows.logit_rows = self.logit_rows
        return rows

    @classmethod
    def for_decode(cls, pool: KVPool, kv_index: torch.Tensor, kv_lens: torch.Tensor) -> "ForwardContext":
        """Context for a decode batch; the last valid slot of each row receives the new token's K/V."""
        batch = kv_index.shape[0]
        rows = torch.arange(batch)
        out_slots = kv_index[rows, kv_lens - 1]
        mask = None
        if bool((kv_lens != kv_index.shape[1]).any()):
            cols = torch.arange(kv_index.shape[1], device=kv_index.device)
            mask = (cols[None, :] < kv_lens.to(kv_index.device)[:, None])[:, None, None, :]
        return cls(ForwardMode.DECODE, pool, out_slots, rows, kv_index=kv_index, kv_lens=kv_lens, kv_mask=mask,
                   shared_len=shared_prefix_len(kv_index, int(kv_lens.min()) - 1))


def shared_prefix_len(kv_index: torch.Tensor, limit: int) -> int:
    """How many of the first `limit` slots are the same in every row of `kv_index` ([B, L])."""
    if kv_index.shape[0] < 2:
        return 0
    differs = (kv_index[:, :limit] != kv_index[:1, :limit]).any(dim=0).nonzero()
    return int(differs[0]) if differs.numel() else limit


_current: ForwardContext | None = None


@contextmanager
def use_context(ctx: ForwardContext) -> Iterator[ForwardContext]:
    """Install `ctx` as the context of the forward passes run inside the block."""
    global _current
    previous, _current = _current, ctx
    try:
        yield ctx
    finally:
        _current = previous


def current_context() -> ForwardContext:
    """The context installed by `use_context`; raises if a forward runs without one."""
    if _current is None:
        raise RuntimeError("model forward called outside use_context(ForwardContext)")
    return _current
