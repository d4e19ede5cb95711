"""What happens to a request once a token is sampled for it: logprobs are recorded, the grammar
advances (with jump-forward over the tokens it forces), and stop conditions are checked.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .detokenizer import Detokenizer
from .request import FinishReason, Request, TokenLogprob


class Decoding:
    """Appends sampled tokens and decides when a request stops."""

    def __init__(self, eos_token_ids: frozenset[int], max_len: int, jump_forward: bool, detokenizer: Detokenizer) -> None:
        self.eos, self.max_len, self.jump_forward, self.detokenizer = eos_token_ids, max_len, jump_forward, detokenizer

    def append(self, req: Request, token: int, logprob: float, top: list[TokenLogprob]) -> FinishReason | None:
        """Append `token` (and any grammar-forced tokens after it); return why the request ends, if it does."""
        p = req.params
        before = len(req.output_ids)
        req.output_ids.append(token)
        if p.wants_logprobs:
            req.output_logprobs.append((logprob, token))
            if p.top_logprobs:
                req.output_top_logprobs.append(top)
        may_stop = len(req.output_ids) >= p.min_new_tokens
        if may_stop and token in p.stop_token_ids:
            req.matched_stop = token
            return FinishReason.STOP
        if may_stop and not p.ignore_eos and token in self.eos:
            return FinishReason.STOP
        if req.grammar is not None:
            req.grammar.consume(token)
            if req.grammar.is_finished:
                return FinishReason.STOP
            self._jump_forward(req)
            if req.grammar.is_finished:
                return FinishReason.STOP
        if may_stop and p.stop:
            hit = self.detokenizer.find_stop(req.output_ids, p.stop, len(req.output_ids) - before)
            if hit is not None:
                req.stop_text_end, req.matched_stop = hit
                return FinishReason.STOP
        if req.remaining_output <= 0 or req.fill_len >= self.max_len:
            return FinishReason.LENGTH
        return None

    def _jump_forward(self, req: Request) -> None:
        """Append the tokens the grammar forces next; they are computed in one extend pass later.
        Requests that asked for logprobs decode them one by one, so every token gets its logprob."""
        if not self.jump_forward or req.params.wants_logprobs:
            return
        room = min(req.remaining_output, self.max_len - req.fill_len)
        forced = req.grammar.forced_tokens()[: max(room, 0)]
        if forced:
            req.grammar.consume_many(forced)
            req.output_ids.extend(forced)


def blocked_tokens_mask(reqs: Sequence[Request], eos_token_ids: frozenset[int], vocab_size: int,
                        grammar_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The [R, V] allowed-token mask for a sampling batch: the grammar's rows, with EOS and stop
    token ids also forbidden while a request is short of its `min_new_tokens`. None if unconstrained."""
    mask = grammar_mask
    for i, req in enumerate(reqs):
        p = req.params
        if len(req.output_ids) >= p.min_new_tokens:
            continue
        blocked = list(p.stop_token_ids) + ([] if p.ignore_eos else list(eos_token_ids))
        if not blocked:
            continue
        if mask is None:
            mask = torch.ones(len(reqs), vocab_size, dtype=torch.bool)
        mask[i, blocked] = False
    return mask
