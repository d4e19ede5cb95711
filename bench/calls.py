"""What every system records about each model call of a workload, and the figures made from it."""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass
from typing import Sequence

from .common import optimal_hit_rate


@dataclass(frozen=True)
class Call:
    """One model call: the token ids it sent and got back, what the system served from its cache,
    and the seconds from the call's submission to its first output token (to its scores for a
    select, to its end for a prefix-only request)."""

    kind: str  # "gen", "select", "prefix"
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    cached_tokens: int
    first_token_s: float


class CallLog:
    """Thread-safe list of the calls of one (workload, system) run; `clear()` between workloads."""

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def add(self, kind: str, prompt_ids: Sequence[int], output_ids: Sequence[int], cached_tokens: int,
            first_token_s: float) -> None:
        with self._lock:
            self._calls.append(Call(kind, tuple(prompt_ids), tuple(output_ids), cached_tokens, first_token_s))

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def summary(self, programs: int, wall_s: float, engine_counts: tuple[int, int] | None = None) -> dict:
        """programs/s, output tokens/s, mean first-token latency of gen and select calls, measured
        and optimal hit rate (from the calls' own token ids) for `programs` finished in `wall_s`.
        `engine_counts`: (prompt, cached) tokens as the serving engine counted them, when it does."""
        calls = self.calls
        prompt = sum(len(c.prompt_ids) for c in calls)
        output = sum(len(c.output_ids) for c in calls)
        cached = sum(c.cached_tokens for c in calls)
        if engine_counts is not None:
            prompt, cached = engine_counts
        optimal = optimal_hit_rate([(c.prompt_ids, c.output_ids) for c in calls])[0]
        latencies = [c.first_token_s for c in calls if c.kind != "prefix"]
        hit = cached / prompt if prompt else 0.0
        return {
            "programs": programs,
            "wall_s": wall_s,
            "programs_per_s": programs / wall_s,
            "output_tokens_per_s": output / wall_s,
            "first_token_s": statistics.fmean(latencies) if latencies else None,
            "hit_rate": hit,
            "optimal_hit_rate": optimal,
            "hit_vs_optimal": hit / optimal if optimal else None,
            "calls": len(calls),
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "output_tokens": output,
        }
