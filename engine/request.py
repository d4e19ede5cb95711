"""A generation request's state inside the engine and its result."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import torch

from radixlm.protocol import SamplingParams

from .grammar import GrammarState

if TYPE_CHECKING:
    from .radix_cache import TreeNode

_rid_counter = itertools.count()



def describe(exc: BaseException) -> str:
    """An exception as a request's error message: its type and text."""
    return f"{type(exc).__name__}: {exc}"

class ReqStatus(Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"  # the request failed alone; `error` says why


TokenLogprob = tuple[float, int]


@dataclass
class GenerationResult:
    """What a finished request reports. Logprob lists hold (logprob, token_id) pairs; prompt
    logprobs start at the request's `logprob_start_len` (None for position 0)."""

    rid: str
    output_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    text: str | None = None
    matched_stop: str | int | None = None
    output_logprobs: list[TokenLogprob] | None = None
    output_top_logprobs: list[list[TokenLogprob]] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_top_logprobs: list[list[TokenLogprob]] | None = None
    error: str | None = None


@dataclass(eq=False)
class Request:
    """Token ids, progress counters and KV ownership of one request.

    `fill_ids` = prompt + output. Positions [0, prefix_len) have KV owned by the locked tree path ending
    at `prefix_node`; positions [prefix_len, kv_len) have KV slots owned by this request; both are
    listed in the request's `req_to_token` row.
    """

    prompt_ids: list[int]
    params: SamplingParams
    rid: str = field(default_factory=lambda: f"req-{next(_rid_counter)}")
    prefix_only: bool = False
    trace_id: str | None = None
    output_ids: list[int] = field(default_factory=list)
    status: ReqStatus = ReqStatus.WAITING
    finish_reason: FinishReason | None = None
    row: int | None = None
    prefix_node: "TreeNode | None" = None
    prefix_len: int = 0
    kv_len: int = 0
    cached_tokens: int | None = None
    retractions: int = 0
    arrival: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    grammar: GrammarState | None = None
    generator: torch.Generator | None = None
    matched_stop: str | int | None = None
    stop_text_end: int | None = None
    output_logprobs: list[TokenLogprob] = field(default_factory=list)
    output_top_logprobs: list[list[TokenLogprob]] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    prompt_top_logprobs: list[list[TokenLogprob]] = field(default_factory=list)
    error: str | None = None

    @property
    def fill_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_at(self, pos: int) -> int:
        """`fill_ids[pos]` without building the whole list (a decode step asks this per request)."""
        n = len(self.prompt_ids)
        return self.prompt_ids[pos] if pos < n else self.output_ids[pos - n]

    @property
    def fill_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def remaining_output(self) -> int:
        return self.params.max_new_tokens - len(self.output_ids)

    @property
    def prompt_logprob_from(self) -> int | None:
        """First prompt position whose logprob was asked for, or None."""
        start = self.params.logprob_start_len
        return min(start, len(self.prompt_ids) - 1) if start >= 0 else None

    def result(self, text: str | None = None) -> GenerationResult:
        p = self.params
        wants_prompt = self.prompt_logprob_from is not None
        return GenerationResult(
            rid=self.rid,
            output_ids=list(self.output_ids),
            finish_reason=self.finish_reason or FinishReason.ABORT,
            prompt_tokens=len(self.prompt_ids),
            cached_tokens=self.cached_tokens or 0,
            completion_tokens=len(self.output_ids),
            text=text,
            matched_stop=self.matched_stop,
            output_logprobs=self.output_logprobs if p.wants_logprobs else None,
            output_top_logprobs=self.output_top_logprobs if p.top_logprobs else None,
            prompt_logprobs=self.prompt_logprobs if wants_prompt else None,
            prompt_top_logprobs=self.prompt_top_logprobs if wants_prompt and p.top_logprobs else None,
            error=self.error,
        )
