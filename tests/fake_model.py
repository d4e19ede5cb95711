"""A deterministic stand-in for the model that really reads the KV pool.

Each token's "K" is its id and its "V" its position. The next token is a hash of the ids read back
from the pool through the step's attention context, so a wrong slot, a stale prefix or a misplaced
position changes the output (or raises), exactly like a real model would be corrupted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.engine.model.context import ForwardMode, current_context


@dataclass(frozen=True)
class FakeConfig:
    vocab_size: int = 64
    num_layers: int = 1
    num_kv_heads: int = 1
    head_dim: int = 1
    max_position_embeddings: int = 4096


class FakeModel:
    """Model interface (`cfg`, `dtype`, `device`, `forward(ids, positions)`) over the real pool."""

    def __init__(self, cfg: FakeConfig = FakeConfig()) -> None:
        self.cfg, self.dtype, self.device = cfg, torch.float64, torch.device("cpu")
        self.forward_calls = 0

    def next_token(self, seq: list[int]) -> int:
        h = 17
        for t in seq:
            h = (h * 31 + t + 1) % 1_000_003
        return h % self.cfg.vocab_size

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ctx = current_context()
        self.forward_calls += 1
        shape = (ids.numel(), 1, 1)
        ctx.pool.write(0, ctx.out_slots, ids.double().view(shape), positions.double().view(shape))
        if ctx.mode is ForwardMode.DECODE:
            slot_lists = [ctx.kv_index[b, : int(ctx.kv_lens[b])] for b in range(ids.numel())]
            ends = list(range(ids.numel()))
        else:
            slot_lists = ctx.seq_slots
            ends = torch.tensor(ctx.extend_lens).cumsum(0).sub(1).tolist()
        last_row_to_seq = {end: slots for end, slots in zip(ends, slot_lists)}
        logits = torch.full((len(ctx.logit_rows), self.cfg.vocab_size), -1e9)
        for i, row in enumerate(ctx.logit_rows.tolist()):
            slots = last_row_to_seq[row]
            stored_pos = ctx.pool.v[0][slots].view(-1).long()
            if not torch.equal(stored_pos, torch.arange(len(slots))):
                raise RuntimeError(f"pool positions corrupted: {stored_pos.tolist()}")
            seq = ctx.pool.k[0][slots].view(-1).long().tolist()
            logits[i, self.next_token(seq)] = 0.0
        return logits

    def reference(self, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
        """What greedy decoding must produce for `prompt`, computed without the engine."""
        seq, out = list(prompt), []
        while len(out) < max_new_tokens:
            t = self.next_token(seq)
            out.append(t)
            seq.append(t)
            if t == eos:
                break
        return out


def run_checked(engine) -> dict:
    """Step an engine to completion, checking its KV ownership after every step; results by rid."""
    results = {}
    while engine.has_work():
        for r in engine.step():
            results[r.rid] = r
        engine.check_integrity()
    return results
