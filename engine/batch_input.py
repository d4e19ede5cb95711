"""What one forward pass takes, prepared from a scheduled batch: token ids, positions, the attention
context (KV slots), which logits rows to compute, and how to read them back (the rows that sample
a next token, and the rows that give prompt logprobs).

Extend: each request computes its next `extend_lens[i]` tokens from its `kv_len` on (a finished
request's last-token pass, a ghost, computes one); a request whose chunk reaches the end of its
tokens samples from the last row. Decode: one token per request, every live one samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv_pool import KVPool
from .model.context import ForwardContext, ForwardMode
from .prompt_logprobs import prompt_logprob_positions, record_prompt_logprobs
from .request import Request, ReqStatus
from .scheduler import Batch


@dataclass(frozen=True)
class PromptLogprobRows:
    """`count` logits rows from `first_row` on hold the logits at prompt positions `first_pos` ...
    of `req` (they give the logprobs of prompt tokens `first_pos + 1` ...)."""

    req: Request
    first_row: int
    first_pos: int
    count: int


@dataclass
class BatchInput:
    """A forward pass's inputs, and where its outputs go. Row i of `sample_rows` is the logits row
    of `batch.sampling[i]`."""

    ids: torch.Tensor  # [T] the new tokens
    positions: torch.Tensor  # [T] their positions in their sequences
    ctx: ForwardContext  # KV slots to write and to attend over, and the logits rows to compute
    sample_rows: list[int]
    prompt_rows: list[PromptLogprobRows]

    def record_prompt_logprobs(self, logits: torch.Tensor) -> None:
        """Append the prompt logprobs this pass computed (`logits`: its output) to their requests."""
        for rows in self.prompt_rows:
            record_prompt_logprobs(rows.req, logits[rows.first_row : rows.first_row + rows.count], rows.first_pos)


def prepare_batch(batch: Batch, table: torch.Tensor, pool: KVPool) -> BatchInput:
    """The inputs of `batch`; `table` is the request-to-slots table (row `req.row` lists its slots)."""
    if batch.mode is ForwardMode.EXTEND:
        return prepare_extend(batch, table, pool)
    return prepare_decode(batch, table, pool)


def prepare_extend(batch: Batch, table: torch.Tensor, pool: KVPool) -> BatchInput:
    reqs = batch.reqs + batch.ghosts
    lens = batch.extend_lens + [1] * len(batch.ghosts)
    ids: list[int] = []
    positions, seq_slots = [], []
    logit_rows: list[int] = []  # token rows of the flat batch whose logits are computed
    sample_rows: list[int] = []  # indices into logit_rows
    prompt_rows: list[PromptLogprobRows] = []
    offset = 0  # the chunk's first token row
    for req, n in zip(reqs, lens):
        ids.extend(req.fill_ids[req.kv_len : req.kv_len + n])
        positions.append(torch.arange(req.kv_len, req.kv_len + n))
        seq_slots.append(table[req.row, : req.kv_len + n])
        first, count = prompt_logprob_positions(req, n)
        if count:
            prompt_rows.append(PromptLogprobRows(req, len(logit_rows), first, count))
            start = offset + first - req.kv_len
            logit_rows.extend(range(start, start + count))
        offset += n
        if req.kv_len + n == req.fill_len and req.status is not ReqStatus.FINISHED:
            sample_rows.append(len(logit_rows))
            logit_rows.append(offset - 1)
    ctx = ForwardContext.for_extend(pool, seq_slots, [r.kv_len for r in reqs], torch.tensor(logit_rows, dtype=torch.long))
    return BatchInput(torch.tensor(ids), torch.cat(positions), ctx, sample_rows, prompt_rows)


def prepare_decode(batch: Batch, table: torch.Tensor, pool: KVPool) -> BatchInput:
    reqs = batch.reqs + batch.ghosts
    kv_lens = torch.tensor([r.kv_len + 1 for r in reqs])
    rows = torch.tensor([r.row for r in reqs])
    ctx = ForwardContext.for_decode(pool, table[rows, : int(kv_lens.max())], kv_lens)
    ctx.logit_rows = ctx.logit_rows[: len(batch.reqs)]  # ghosts only write their KV
    ids = torch.tensor([r.token_at(r.kv_len) for r in reqs])
    return BatchInput(ids, kv_lens - 1, ctx, list(range(len(batch.reqs))), [])
