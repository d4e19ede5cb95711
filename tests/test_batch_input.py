"""Batch-input preparation on hand-built requests and a slot table: ids, positions, KV slots,
logits rows, sampling rows and the prompt-logprob plan, without a model."""

from __future__ import annotations

import torch

from radixlm.engine.batch_input import PromptLogprobRows, prepare_batch
from radixlm.engine.kv_pool import KVPool
from radixlm.engine.model.context import ForwardMode
from radixlm.engine.request import Request, ReqStatus, SamplingParams
from radixlm.engine.scheduler import Batch

POOL = KVPool(512, 1, 1, 2)
TABLE = torch.arange(4 * 16).view(4, 16) + 100  # row r, position p -> slot 100 + 16 r + p


def request(prompt: list[int], row: int, kv_len: int, output: list[int] = (), **params) -> Request:
    req = Request(list(prompt), SamplingParams(**params), output_ids=list(output))
    req.row, req.kv_len, req.prefix_len = row, kv_len, kv_len
    return req


def slots(row: int, start: int, stop: int) -> list[int]:
    return TABLE[row, start:stop].tolist()


def test_extend_lists_each_chunk_and_samples_only_where_a_chunk_ends_its_tokens():
    done = request([1, 2, 3, 4, 5], row=0, kv_len=2)  # 3 more tokens: reaches its end, samples
    chunk = request([7, 8, 9, 10, 11, 12], row=1, kv_len=0)  # a 4-token chunk of 6: no sample yet
    ghost = request([20, 21], row=2, kv_len=2, output=[22])  # finished: its last token's KV only
    ghost.status = ReqStatus.FINISHED
    inp = prepare_batch(Batch(ForwardMode.EXTEND, [done, chunk], [3, 4], [ghost]), TABLE, POOL)
    assert inp.ids.tolist() == [3, 4, 5, 7, 8, 9, 10, 22]
    assert inp.positions.tolist() == [2, 3, 4, 0, 1, 2, 3, 2]
    assert inp.ctx.out_slots.tolist() == slots(0, 2, 5) + slots(1, 0, 4) + slots(2, 2, 3)
    assert [s.tolist() for s in inp.ctx.seq_slots] == [slots(0, 0, 5), slots(1, 0, 4), slots(2, 0, 3)]
    assert (inp.ctx.prefix_lens, inp.ctx.extend_lens) == ([2, 0, 2], [3, 4, 1])
    assert inp.ctx.logit_rows.tolist() == [2]  # only `done`'s last token
    assert inp.sample_rows == [0] and inp.prompt_rows == []


def test_prompt_logprob_rows_precede_the_sampling_row_of_their_request():
    # Logprobs from prompt position 2 on: the logits at positions 1..3 give tokens 2..4.
    plain = request([5, 6, 7], row=1, kv_len=1)
    wants = request([1, 2, 3, 4, 5], row=0, kv_len=1, logprob_start_len=2)
    inp = prepare_batch(Batch(ForwardMode.EXTEND, [plain, wants], [2, 4]), TABLE, POOL)
    # Flat token rows: plain at 0-1, wants at 2-5 (positions 1-4).
    assert inp.ctx.logit_rows.tolist() == [1, 2, 3, 4, 5]
    assert inp.prompt_rows == [PromptLogprobRows(wants, first_row=1, first_pos=1, count=3)]
    assert inp.sample_rows == [0, 4]


def test_a_chunk_before_the_wanted_positions_plans_no_prompt_rows():
    wants = request(list(range(1, 11)), row=0, kv_len=0, logprob_start_len=8)
    inp = prepare_batch(Batch(ForwardMode.EXTEND, [wants], [4]), TABLE, POOL)
    assert inp.prompt_rows == [] and inp.sample_rows == [] and inp.ctx.logit_rows.numel() == 0


def test_decode_reads_each_rows_slots_and_gives_ghosts_no_logits():
    short = request([1, 2], row=0, kv_len=3, output=[3, 4])  # computes output token 4 at position 3
    long = request([5, 6, 7, 8], row=1, kv_len=5, output=[9, 10])  # computes 10 at position 5
    ghost = request([11], row=2, kv_len=1, output=[12])
    ghost.status = ReqStatus.FINISHED
    inp = prepare_batch(Batch(ForwardMode.DECODE, [short, long], ghosts=[ghost]), TABLE, POOL)
    assert inp.ids.tolist() == [4, 10, 12]
    assert inp.positions.tolist() == [3, 5, 1]
    assert inp.ctx.kv_lens.tolist() == [4, 6, 2]
    assert inp.ctx.kv_index[:, :2].tolist() == [slots(0, 0, 2), slots(1, 0, 2), slots(2, 0, 2)]
    assert inp.ctx.out_slots.tolist() == [TABLE[0, 3], TABLE[1, 5], TABLE[2, 1]]
    assert inp.ctx.logit_rows.tolist() == [0, 1] and inp.sample_rows == [0, 1]
