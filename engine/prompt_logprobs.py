"""Prompt logprobs: which prompt positions of an extend chunk need logits, and recording them.

The logprob of prompt token i comes from the logits at position i - 1; a request asking for them
from `logprob_start_len` on recomputes those positions (the KV manager caps its cached prefix).
"""

from __future__ import annotations

import torch

from .request import Request


def prompt_logprob_positions(req: Request, n: int) -> tuple[int, int]:
    """(first position, count) of the positions in the chunk [kv_len, kv_len + n) whose logits give
    prompt logprobs; count 0 when none are wanted there."""
    start = req.prompt_logprob_from
    if start is None or req.output_ids:
        return req.kv_len, 0
    first = max(req.kv_len, max(start, 1) - 1)
    end = min(req.kv_len + n, len(req.prompt_ids) - 1)
    return first, max(end - first, 0)


def record_prompt_logprobs(req: Request, logits: torch.Tensor, first_pos: int) -> None:
    """Append the logprobs of prompt tokens first_pos + 1 ... given the logits at first_pos ..."""
    if not req.prompt_logprobs and req.prompt_logprob_from == 0:
        req.prompt_logprobs.append(None)
        if req.params.top_logprobs:
            req.prompt_top_logprobs.append([])
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    targets = torch.tensor(req.prompt_ids[first_pos + 1 : first_pos + 1 + logits.shape[0]])
    chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
    req.prompt_logprobs.extend(zip(chosen, targets.tolist()))
    k = req.params.top_logprobs
    if k:
        values, ids = logprobs.topk(k, dim=-1)
        req.prompt_top_logprobs.extend(list(zip(v, i)) for v, i in zip(values.tolist(), ids.tolist()))
