"""Counters the engine keeps: prefix reuse, evictions, pool use, queue length, throughput."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TraceStats:
    """What one agent trace (all calls tagged with one trace id) cost and reused."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    recomputed_tokens: int = 0  # prompt tokens it had computed in its previous call and computed again
    saved_tokens: int = 0  # prompt tokens of resumed calls served from the trace's pinned path
    pinned_tokens: int = 0  # tokens its pin holds right now (only the part no one else locks)
    pinned_seconds: float = 0.0  # how long its paths were pinned, in total
    tool_seconds: float = 0.0  # time between its calls (the agent running tools), in total
    wall_seconds: float = 0.0  # from its first call's arrival to its last finish (or its end)
    ended: bool = False


@dataclass
class EngineStats:
    """Cumulative counters since the engine started (or since `reset`)."""

    requests_finished: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    computed_tokens: int = 0
    generated_tokens: int = 0
    evicted_tokens: int = 0
    retractions: int = 0
    calls_run_ahead: int = 0  # first calls of programs held back by program admission that ran ahead of it
    extend_passes: int = 0
    decode_passes: int = 0
    busy_seconds: float = 0.0
    extend_seconds: float = 0.0  # busy_seconds split by pass kind: extend (prefill, jump-forward) ...
    decode_seconds: float = 0.0  # ... and decode
    traces: dict[str, TraceStats] = field(default_factory=dict)

    def record_finished(self, trace_id: str | None, prompt: int, cached: int, output: int) -> None:
        """Count a finished request, and its trace's share when it carries a trace id."""
        self.requests_finished += 1
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        if trace_id is not None:
            t = self.traces.setdefault(trace_id, TraceStats())
            t.calls += 1
            t.prompt_tokens += prompt
            t.cached_tokens += cached
            t.output_tokens += output

    def record_pass(self, extend: bool, computed: int, sampled: int, seconds: float) -> None:
        """Count one forward pass: `computed` tokens' KV, `sampled` new tokens, in `seconds`."""
        self.busy_seconds += seconds
        self.generated_tokens += sampled
        self.computed_tokens += computed
        if extend:
            self.extend_passes += 1
            self.extend_seconds += seconds
        else:
            self.decode_passes += 1
            self.decode_seconds += seconds

    @property
    def hit_rate(self) -> float:
        """Fraction of finished requests' prompt tokens served from the radix cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def forward_passes(self) -> int:
        return self.extend_passes + self.decode_passes

    def as_dict(self, **gauges: Any) -> dict[str, Any]:
        """Counters, derived rates and the given point-in-time gauges as one flat dict."""
        out = asdict(self)
        out["hit_rate"] = self.hit_rate
        out["forward_passes"] = self.forward_passes
        out["decode_tokens_per_s"] = self.generated_tokens / self.busy_seconds if self.busy_seconds else 0.0
        out.update(gauges)
        return out
