"""SGLang-shaped `meta_info` of a gen (what `s.get_meta_info(name)` returns and what streamed chunks
carry): token counts, finish reason, and the logprobs the gen asked for. Logprob entries are
(logprob, token_id, token_text or None), the text only with `return_text_in_logprobs`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backend import GenOutput, StreamPiece


@dataclass(frozen=True)
class LogprobAsk:
    """What one gen asked for: output logprobs, top-k alternatives, prompt logprobs from a position."""

    logprobs: bool = False
    top_logprobs: int = 0
    logprob_start_len: int | None = None
    with_text: bool = False


def entries(raw: list | None, with_text: bool) -> list:
    return [(None, None, None) if e is None else (e[0], e[1], e[2] if with_text else None) for e in raw or []]


def finish_reason(out: GenOutput) -> dict[str, Any]:
    if out.finish_reason == "length":
        return {"type": "length", "length": out.usage.completion_tokens}
    if out.finish_reason == "stop":
        return {"type": "stop", "matched": out.matched_stop}
    return {"type": out.finish_reason}


def gen_meta(out: GenOutput, ask: LogprobAsk, prompt: str) -> dict[str, Any]:
    """The meta_info of a finished gen; `usage` and `prompt` are radixlm's additions."""
    meta: dict[str, Any] = {
        "prompt_tokens": out.usage.prompt_tokens, "completion_tokens": out.usage.completion_tokens,
        "cached_tokens": out.usage.cached_tokens, "finish_reason": finish_reason(out),
        "usage": out.usage, "prompt": prompt,
    }
    if ask.logprobs:
        meta["output_token_logprobs"] = entries(out.output_logprobs, ask.with_text)
        meta["output_token_logprobs_length"] = len(meta["output_token_logprobs"])
        if ask.top_logprobs:
            meta["output_top_logprobs"] = [entries(t, ask.with_text) for t in out.output_top_logprobs or []]
    if ask.logprob_start_len is not None and ask.logprob_start_len >= 0:
        meta["input_token_logprobs"] = entries(out.prompt_logprobs, ask.with_text)
        if ask.top_logprobs:
            meta["input_top_logprobs"] = [entries(t, ask.with_text) for t in out.prompt_top_logprobs or []]
    return meta


def chunk_meta(piece: StreamPiece, completion_tokens: int, logprobs_so_far: int, ask: LogprobAsk) -> dict[str, Any]:
    """The meta_info of one streamed chunk: counts so far, logprobs of this chunk's tokens only."""
    meta: dict[str, Any] = {"completion_tokens": completion_tokens}
    if ask.logprobs:
        meta["output_token_logprobs"] = entries(piece.logprobs, ask.with_text)
        meta["output_token_logprobs_length"] = logprobs_so_far
        if ask.top_logprobs:
            meta["output_top_logprobs"] = [entries(t, ask.with_text) for t in piece.top_logprobs or []]
    return meta


def merge_chunk_meta(pending: dict | None, meta: dict) -> dict:
    """A chunk's meta with the logprobs of earlier chunks that produced no text prepended."""
    if pending is None:
        return meta
    merged = dict(meta)
    for key in ("output_token_logprobs", "output_top_logprobs"):
        if key in meta or key in pending:
            merged[key] = list(pending.get(key, [])) + list(meta.get(key, []))
    return merged
