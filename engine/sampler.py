"""Batched per-request sampling: penalties, allowed-token mask, temperature, top-k / top-p / min-p, logprobs.

One `sample` call picks the next token of every row of a forward pass. Each row has its own
`SamplingParams` and optional `torch.Generator`; a seeded row draws only from its own generator, so
its tokens do not depend on which other rows share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from radixlm.protocol import SamplingParams


@dataclass
class SampleOutput:
    """The chosen token of each row, with logprobs under the row's raw distribution.

    Logprobs are log_softmax of the logits as the model produced them, after the allowed-token mask
    but before penalties, temperature and top-k / top-p / min-p (as SGLang reports them).
    `top_logprobs[i]` holds the row's k most likely (logprob, token_id), sorted descending.
    """

    tokens: list[int]
    logprobs: list[float]  # empty when the call asked for none
    top_logprobs: list[list[tuple[float, int]]]


def sample(
    logits: torch.Tensor,
    configs: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    prompt_ids: Sequence[Sequence[int]] | None = None,
    output_ids: Sequence[Sequence[int]] | None = None,
    allowed: torch.Tensor | None = None,
    top_logprobs: Sequence[int] | None = None,
    logprobs: bool = True,
) -> SampleOutput:
    """Pick one token per row of `logits` [R, V]; the caller's tensor is never modified.

    Per row: mask (`allowed` False -> forbidden; every row must allow at least one token) ->
    repetition, frequency and presence penalties -> greedy rows take the argmax; sampled rows divide
    by temperature -> softmax -> top-k -> top-p -> min-p -> draw with the row's generator (None: the
    global RNG). `prompt_ids` is required when a row has a repetition penalty, `output_ids` when a
    row has any penalty. `top_logprobs` gives each row's k (None: all 0; capped at V). `logprobs`: whether
    to compute the chosen tokens' logprobs (a logsumexp over the vocabulary; implied by any top_logprobs).
    With only greedy, unpenalized, unmasked rows and no logprobs this is one argmax.
    """
    rows, vocab = logits.shape
    if len(configs) != rows or len(generators) != rows:
        raise ValueError(f"{rows} rows but {len(configs)} configs and {len(generators)} generators")
    raw = logits.float()
    if allowed is not None:  # built on the host (grammar bitmasks, stop rules); moved to the logits' device
        raw = raw.masked_fill(~allowed.to(raw.device, non_blocking=True), float("-inf"))
    x = _penalize(raw, configs, prompt_ids, output_ids)
    tokens = x.argmax(-1)
    sampled = [i for i, c in enumerate(configs) if not c.greedy]
    if sampled:
        temps = torch.tensor([configs[i].temperature for i in sampled], device=x.device)
        probs = torch.softmax(x[sampled] / temps[:, None], -1)
        probs = _filter(probs, [configs[i] for i in sampled])
        tokens[sampled] = _draw(probs, [generators[i] for i in sampled])

    ks = list(top_logprobs) if top_logprobs is not None else [0] * rows
    kmax = min(max(ks, default=0), vocab)
    top: list[list[tuple[float, int]]] = [[] for _ in range(rows)]
    if not logprobs and kmax == 0:
        return SampleOutput(tokens.tolist(), [], top)
    lse = raw.logsumexp(-1, keepdim=True)
    chosen = raw.gather(1, tokens[:, None]) - lse
    if kmax > 0:
        values, ids = raw.topk(kmax, -1)
        values, ids = (values - lse).tolist(), ids.tolist()
        top = [list(zip(values[i][:k], ids[i][:k])) for i, k in enumerate(ks)]
    return SampleOutput(tokens.tolist(), chosen.squeeze(1).tolist(), top)


def _penalize(
    logits: torch.Tensor,
    configs: Sequence[SamplingParams],
    prompt_ids: Sequence[Sequence[int]] | None,
    output_ids: Sequence[Sequence[int]] | None,
) -> torch.Tensor:
    """Apply the repetition, then frequency and presence penalties; returns `logits` itself if none."""
    rep = [i for i, c in enumerate(configs) if c.repetition_penalty != 1]
    freq = [i for i, c in enumerate(configs) if c.frequency_penalty or c.presence_penalty]
    if not rep and not freq:
        return logits
    if output_ids is None or (rep and prompt_ids is None):
        raise ValueError("penalties need output_ids (and prompt_ids for repetition_penalty)")
    out = logits.clone()
    dev = out.device
    if rep:
        assert prompt_ids is not None
        seen = torch.zeros_like(out, dtype=torch.bool)
        seen[_indices(rep, (prompt_ids, output_ids), dev)] = True
        pen = torch.tensor([c.repetition_penalty for c in configs], device=dev)[:, None]
        out = torch.where(seen, torch.where(out > 0, out / pen, out * pen), out)
    if freq:
        counts = torch.zeros_like(out)
        index = _indices(freq, (output_ids,), dev)
        counts.index_put_(index, torch.ones(len(index[0]), device=dev), accumulate=True)
        fp = torch.tensor([c.frequency_penalty for c in configs], device=dev)[:, None]
        pp = torch.tensor([c.presence_penalty for c in configs], device=dev)[:, None]
        out = out - fp * counts - pp * (counts > 0)
    return out


def _indices(
    rows: Sequence[int], seqs: Sequence[Sequence[Sequence[int]]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) index tensors of every token of `seqs[s][row]` for each row in `rows`."""
    parts = [torch.as_tensor(s[i], dtype=torch.long) for i in rows for s in seqs]
    lens = torch.tensor([len(p) for p in parts])
    row_ids = torch.tensor([i for i in rows for _ in seqs]).repeat_interleave(lens)
    return row_ids.to(device), torch.cat(parts).to(device)


def _filter(probs: torch.Tensor, configs: Sequence[SamplingParams]) -> torch.Tensor:
    """Zero what top-k, then top-p, then min-p drop; each sees the renormalised result of the last.

    top-p keeps the smallest most-likely set whose probability reaches top_p (always the top token);
    min-p drops tokens below min_p times the top probability. Each row ends up with one probability
    threshold and tokens tied with the last kept one are kept too, so a row's result depends only on
    its own values, never on tie order or its neighbours. Only the sorted prefix the rows need is
    computed: top-k rows need k values, min-p-only rows the maximum, top-p rows without top-k all.
    """
    vocab, dev = probs.shape[1], probs.device
    k = [c.top_k if 0 < c.top_k < vocab else vocab for c in configs]
    if all(kk == vocab and c.top_p >= 1 and c.min_p <= 0 for kk, c in zip(k, configs)):
        return probs
    width = max(kk if kk < vocab or c.top_p < 1 else 1 for kk, c in zip(k, configs))
    top = probs.topk(width, dim=-1).values
    k_t = torch.tensor(k, device=dev)[:, None]
    p_t = torch.tensor([c.top_p if c.top_p < 1 else float("inf") for c in configs], device=dev)[:, None]
    m_t = torch.tensor([c.min_p for c in configs], device=dev)[:, None]
    ranks = torch.arange(width, device=dev)
    in_k = top.masked_fill(ranks >= k_t, 0.0)
    before = in_k.cumsum(-1) - in_k
    kept = ((ranks < k_t) & (before < p_t * in_k.sum(-1, keepdim=True))).sum(-1, keepdim=True)
    cut = torch.where((k_t < vocab) | (p_t < 1), top.gather(1, kept - 1), 0.0)
    return probs.masked_fill(probs < torch.maximum(cut, m_t * top[:, :1]), 0.0)


def _draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row of unnormalised `probs`; seeded rows each draw from their own generator."""
    out = torch.empty(len(generators), dtype=torch.long, device=probs.device)
    free = [j for j, g in enumerate(generators) if g is None]
    if free:
        out[free] = torch.multinomial(probs[free], 1).squeeze(1)
    for j, g in enumerate(generators):
        if g is not None:
            out[j] = torch.multinomial(probs[j], 1, generator=g)[0]
    return out
