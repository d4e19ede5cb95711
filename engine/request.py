"""A generation request's state inside the engine, its sampling parameters and its result."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .radix_cache import TreeNode

_rid_counter = itertools.count()


class ReqStatus(Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request (greedy)."""

    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenerationResult:
    """What a finished request reports."""

    rid: str
    output_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    text: str | None = None


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

    @property
    def fill_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def fill_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def remaining_output(self) -> int:
        return self.params.max_new_tokens - len(self.output_ids)

    def result(self, text: str | None = None) -> GenerationResult:
        return GenerationResult(
            rid=self.rid,
            output_ids=list(self.output_ids),
            finish_reason=self.finish_reason or FinishReason.ABORT,
            prompt_tokens=len(self.prompt_ids),
            cached_tokens=self.cached_tokens or 0,
            completion_tokens=len(self.output_ids),
            text=text,
        )
