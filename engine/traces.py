"""The trace table: what the engine knows about each agent trace (all calls tagged with one trace id).

It follows a trace through its calls: when it started, how many of its calls are in flight, how long
its tools ran between calls (the gap from one call's finish to the next call's arrival), how much
compute it has attained (the program-level policy's key), and the token path of its newest call, so a
resumed call can be told apart into prompt tokens served from the cache and tokens it had computed
before and now computes again. Counters land in the trace's `TraceStats` (`client.stats()["traces"]`).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .radix_cache import common_prefix_len
from .request import Request
from .stats import TraceStats

# Tool time assumed for a trace before any of its gaps (and any other trace's) was observed.
DEFAULT_TOOL_SECONDS = 1.0
# The estimates over every trace (tool times, working sets) use the most recent this many.
WINDOW = 512


@dataclass
class TraceState:
    """Runtime state of one open trace (dropped when the trace ends; its TraceStats stay)."""

    started: float
    order: int  # traces numbered by first arrival: breaks ties between traces started at the same time
    in_flight: int = 0
    attained: int = 0  # tokens computed for this trace (prompt tokens computed + tokens generated)
    admitted: bool = False  # a call of it was admitted: the program has started running
    ran_ahead: bool = False  # its first call ran ahead of program admission (policy.may_run_ahead)
    path_tokens: int = 0  # tokens of its newest call's path (prompt on admission, prompt + output after)
    shared_tokens: int = 0  # its first admitted call's cached prefix: what it shares with earlier programs
    last_finish: float | None = None
    last_path: list[int] = field(default_factory=list)  # ids of the newest finished call whose KV it computed
    gaps: list[float] = field(default_factory=list)  # observed tool times, seconds


class TraceTable:
    """Per-trace state and counters; the engine calls the `on_*` hooks as requests move."""

    def __init__(self, stats: Callable[[], dict[str, TraceStats]], clock: Callable[[], float] = time.perf_counter) -> None:
        """`stats` returns the engine's current per-trace counters (the engine may replace its stats)."""
        self.stats, self.clock = stats, clock
        self.open: dict[str, TraceState] = {}
        self._gaps: deque[float] = deque(maxlen=WINDOW)  # every trace's observed tool times, seconds
        # (own, shared) tokens of the ended traces: their last path less the prefix their first call
        # found cached, and that prefix; with their sums, which program admission reads for every
        # waiting new program each scheduling round
        self._working_sets: deque[tuple[int, int]] = deque(maxlen=WINDOW)
        self._working_set_sums = [0, 0]
        self._order = itertools.count()

    def record(self, trace_id: str) -> TraceStats:
        return self.stats().setdefault(trace_id, TraceStats())

    def on_arrival(self, req: Request) -> None:
        """A call of a trace was queued: (re)open its trace and measure the tool time since its last call."""
        if req.trace_id is None:
            return
        now = self.clock()
        state = self.open.get(req.trace_id)
        if state is None:
            state = self.open[req.trace_id] = TraceState(started=now, order=next(self._order))
            self.record(req.trace_id).ended = False
        elif state.in_flight == 0 and state.last_finish is not None:
            gap = max(now - state.last_finish, 0.0)
            state.gaps.append(gap)
            self._gaps.append(gap)
            self.record(req.trace_id).tool_seconds += gap
        state.in_flight += 1

    def on_admit(self, req: Request, ahead: bool = False) -> None:
        """A call was admitted with `req.prefix_len` tokens cached: count what its trace recomputes,
        the tokens it had already computed in its previous call but finds no longer cached. `ahead`:
        the trace's first call runs ahead of program admission, so its program has not started."""
        state = self.open.get(req.trace_id) if req.trace_id is not None else None
        if state is None:
            return
        if self.none_admitted(req.trace_id):  # its first call: what it found cached, it shares
            state.shared_tokens = req.prefix_len
        if ahead:
            state.ran_ahead = True
        else:
            state.admitted = True
        state.path_tokens = max(state.path_tokens, req.fill_len)
        if req.retractions:
            return
        known = min(common_prefix_len(state.last_path, req.prompt_ids, 0), len(req.prompt_ids) - 1)
        self.record(req.trace_id).recomputed_tokens += max(known - req.prefix_len, 0)

    def on_computed(self, req: Request, tokens: int) -> None:
        """`tokens` positions of `req` were computed in a forward pass."""
        state = self.open.get(req.trace_id) if req.trace_id is not None else None
        if state is not None:
            state.attained += tokens

    def on_finish(self, req: Request) -> None:
        """A call of a trace finished (or was aborted)."""
        state = self.open.get(req.trace_id) if req.trace_id is not None else None
        if state is None:
            return
        state.in_flight = max(state.in_flight - 1, 0)
        state.last_finish = self.clock()
        state.last_path = req.fill_ids[: req.kv_len]  # tokens whose KV the call computed (not forced/last ones)
        state.path_tokens = max(state.path_tokens, len(req.fill_ids))
        self.record(req.trace_id).wall_seconds = state.last_finish - state.started

    def end(self, trace_id: str) -> bool:
        """The agent said the trace is over; returns False if it was not open."""
        state = self.open.pop(trace_id, None)
        if state is None:
            return False
        if state.admitted or state.ran_ahead:
            self._add_working_set(state.path_tokens - state.shared_tokens, state.shared_tokens)
        record = self.record(trace_id)
        record.ended = True
        record.wall_seconds = self.clock() - state.started
        return True

    def is_idle(self, trace_id: str) -> bool:
        """True when the trace is open and none of its calls is queued or running (it is in a tool)."""
        state = self.open.get(trace_id)
        return state is not None and state.in_flight == 0

    def attained(self, trace_id: str | None) -> int:
        state = self.open.get(trace_id) if trace_id is not None else None
        return state.attained if state is not None else 0

    def started(self, req: Request) -> tuple[float, int]:
        """When the request's program started (its trace's first arrival, or the request's own), with
        the trace's arrival number to order traces that started at the same time."""
        state = self.open.get(req.trace_id) if req.trace_id is not None else None
        return (state.started, state.order) if state is not None else (req.arrival, -1)

    def trace_started(self, trace_id: str) -> tuple[float, int] | None:
        """When the open trace started, as `started` gives it; None if the trace is not open."""
        state = self.open.get(trace_id)
        return (state.started, state.order) if state is not None else None

    def is_started(self, trace_id: str) -> bool:
        """True when the trace is open and one of its calls has been admitted."""
        state = self.open.get(trace_id)
        return state is not None and state.admitted

    def none_admitted(self, trace_id: str) -> bool:
        """True when the trace is open and none of its calls has been admitted yet."""
        state = self.open.get(trace_id)
        return state is not None and not state.admitted and not state.ran_ahead

    def started_programs(self, stale_s: float) -> int:
        """Open traces with a call admitted that are running: a call queued or running, or one that
        finished less than `stale_s` seconds ago (an agent that stays away longer is not counted: it
        may have gone without ending its trace)."""
        now = self.clock()
        return sum(s.admitted and (s.in_flight > 0 or s.last_finish is None or now - s.last_finish < stale_s)
                   for s in self.open.values())

    def expected_working_set(self) -> tuple[float, float]:
        """A program's expected working set as (own tokens, tokens shared with other programs): its
        last path, less the prefix its first call found cached, and that prefix; the means over the
        (last WINDOW) traces that ended. Before any ended: twice the longest path of a started trace,
        all of it counted as its own (it is still growing, and how much of it other programs share is
        not known yet). (0, 0) before any program started."""
        if self._working_sets:
            n = len(self._working_sets)
            return self._working_set_sums[0] / n, self._working_set_sums[1] / n
        return 2.0 * max((s.path_tokens for s in self.open.values() if s.admitted), default=0), 0.0

    def _add_working_set(self, own: int, shared: int) -> None:
        if len(self._working_sets) == WINDOW:  # the oldest leaves the window
            old_own, old_shared = self._working_sets[0]
            self._working_set_sums[0] -= old_own
            self._working_set_sums[1] -= old_shared
        self._working_sets.append((own, shared))
        self._working_set_sums[0] += own
        self._working_set_sums[1] += shared

    def expected_remaining_tool_seconds(self, trace_id: str, away: float) -> float:
        """How much longer a trace whose tool has run `away` seconds is expected to stay away: the mean
        residual of the observed tool times (this trace's, else the last WINDOW of every trace's) that
        ran longer than `away`; once none did, `away` itself (a tool that ran long is taken to run as
        long again); before any tool time was observed, DEFAULT_TOOL_SECONDS less `away`, or `away`
        once that is longer."""
        state = self.open.get(trace_id)
        gaps = state.gaps if state is not None and state.gaps and max(state.gaps) > away else self._gaps
        longer = [g - away for g in gaps if g > away]
        if longer:
            return sum(longer) / len(longer)
        return away if self._gaps else max(DEFAULT_TOOL_SECONDS - away, away)
