"""Trace retention: keep an agent's newest KV path in the tree while the agent runs a tool.

When a call of a trace finishes and its KV goes to the radix cache, the trace's path (prompt +
output) gets one extra lock, its *pin*, so LRU eviction cannot take it before the agent comes back.
A pin is released when the trace's next call is admitted (that call holds its own lock on the path),
when the trace ends, when its TTL passes, or when memory is needed:

- Admission never waits on a pin under the lpm, fcfs and dfs-weight policies: the slots only pins
  hold count as available (`releasable`), and an allocation that finds the free list and the
  evictable leaves short releases pins, lowest expected benefit first (`release_one`).
- Under the program policy, admission follows the program order instead (a `PinGrant`). Waiting
  calls are admitted in that order (the first that does not fit ends the round, as under every
  policy); the one admitted next may release only the pins of traces ranked below it. The pins of
  traces ranked at or above it are released only when nothing is running and nothing was admitted
  this round, i.e. when the engine would otherwise sit idle, and then after all the others. Calls
  already running may grow into any pin. So the engine never idles while work waits, and a call that
  needs the space gets it at the latest when the calls running ahead of it are done, or when the pins
  in its way end (next call, end of trace, TTL). Pins then go lowest-ranked trace first, not by benefit.
- Expected benefit of a pin = tokens it saves per slot-second it holds: its exclusive tokens (those
  no request locks) divided by those same slots times the seconds the agent is still expected to be
  away: the mean residual of the observed tool times longer than the time already spent (the
  trace's own, else every trace's), so an agent about to return is worth more than one that just
  left; once no observed tool ran that long, the time spent so far is taken as the remainder.
- A budget caps the pinned share of the pool: a new pin beyond `max_share` releases the pins worth
  least (possibly itself). Unless configured it is 1.0 under the program policy, whose program
  admission bounds what the running programs hold, and 0.5 under the others (`pinned_share`).
- Pins only lock tree nodes, so they never change what is computed, only whether it is recomputed.

The `ttl` mode is the SGLang-style baseline: a fixed-TTL pin per call, released by its TTL or, under
pressure, oldest first; neither the next call nor the trace's end releases it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .prefix_cache import PrefixCache
from .radix_cache import TreeNode
from .request import FinishReason, Request
from .traces import TraceTable

if TYPE_CHECKING:
    from .policy import ProgramRank

MODES = ("benefit", "ttl")
MIN_REMAINING_S = 0.05
DEFAULT_PINNED_SHARE = 0.5  # the pin budget when none is configured, under every policy but program


def pinned_share(configured: float | None, policy: str) -> float:
    """The pin budget (share of the pool): the configured one, else 1.0 under the program policy (its
    program admission already runs only as many programs as the pool holds, see policy.py) and
    DEFAULT_PINNED_SHARE under the others (where every agent runs at once and pins must leave the
    running calls room)."""
    if configured is not None:
        return configured
    return 1.0 if policy == "program" else DEFAULT_PINNED_SHARE


@dataclass(frozen=True)
class PinGrant:
    """The pins one allocation may release: all but those of the traces ranked `ahead` of (or level
    with) the call it is for, and those too (after all the others, counted as `idle` releases) when
    `idle`: the engine would otherwise sit idle."""

    ahead: frozenset[str] = frozenset()
    idle: bool = False

    @property
    def kept(self) -> frozenset[str]:
        """The pins this allocation leaves in place whatever it needs."""
        return frozenset() if self.idle else self.ahead


ANY_PIN = PinGrant()  # pins never block: calls already running, and every policy but program


@dataclass
class Pin:
    """One trace's lock on its newest path."""

    trace_id: str
    node: TreeNode
    length: int  # tokens on the path root .. node
    since: float
    expires: float


class TraceRetention:
    """The pins of the open traces over one prefix cache; see the module docstring."""

    def __init__(self, cache: PrefixCache, traces: TraceTable, capacity: int, ttl_s: float, max_share: float,
                 mode: str = "benefit", clock: Callable[[], float] = time.perf_counter,
                 rank: Callable[[str], ProgramRank] | None = None) -> None:
        """`rank` (under the program policy): a trace's place in the program order, larger = lower;
        pins are then released lowest-ranked first instead of lowest benefit first."""
        if mode not in MODES:
            raise ValueError(f"unknown retention mode {mode!r}; choose one of {', '.join(MODES)}")
        self.cache, self.traces, self.clock, self.rank = cache, traces, clock, rank
        self.capacity, self.ttl_s, self.max_share, self.mode = capacity, ttl_s, max_share, mode
        self.pins: dict[str, Pin] = {}
        self.released: dict[str, int] = {"next_call": 0, "end_trace": 0, "ttl": 0, "pressure": 0, "idle": 0,
                                         "budget": 0}
        self._releasable: dict[frozenset[str], int] = {}  # tokens by kept pins, at lock epoch _epoch
        self._epoch = -1

    # -- hooks (KVManager) ----------------------------------------------------------------------

    def on_release(self, req: Request, node: TreeNode, length: int) -> None:
        """A request just handed its KV to the tree, ending at `node` (`length` tokens): pin that path
        if the request finished a call of an open trace that has no other call queued or running and
        whose program has started (a first call that ran ahead of program admission is not pinned)."""
        if req.trace_id is None or req.finish_reason not in (FinishReason.STOP, FinishReason.LENGTH):
            return
        if self.traces.is_idle(req.trace_id) and self.traces.is_started(req.trace_id):
            self.keep(req.trace_id, node, length)

    def on_admit(self, req: Request) -> None:
        """The trace's next call was admitted with its own lock on its prefix: count the prompt tokens
        it got from the pinned path and release the pin."""
        pin = self.pins.get(req.trace_id) if req.trace_id is not None else None
        if pin is not None:
            self.traces.record(req.trace_id).saved_tokens += min(req.prefix_len, pin.length)
            self.drop(req.trace_id, "next_call")

    # -- taking and dropping pins -------------------------------------------------------------

    def keep(self, trace_id: str, node: TreeNode, length: int) -> None:
        """Pin `node` (the end of the trace's newest path), replacing the trace's previous pin."""
        if node is self.cache.root or length == 0:
            return
        now = self.clock()
        self.cache.lock(node)
        old = self.pins.get(trace_id)
        self.pins[trace_id] = Pin(trace_id, node, length, now, now + self.ttl_s)
        if old is not None:
            self._unlock(old, now)
        self._refresh_gauge(trace_id)
        if self.mode == "benefit":
            while self.releasable() > self.max_share * self.capacity and self.release_one("budget"):
                pass

    def drop(self, trace_id: str, reason: str) -> bool:
        """Release the trace's pin, if any; `reason` is counted in `released`."""
        if self.mode == "ttl" and reason in ("next_call", "end_trace"):
            return False
        pin = self.pins.pop(trace_id, None)
        if pin is None:
            return False
        self._unlock(pin, self.clock())
        self.released[reason] += 1
        return True

    def expire(self) -> int:
        """Release every pin whose TTL passed; returns how many."""
        now = self.clock()
        due = [p.trace_id for p in self.pins.values() if p.expires <= now]
        for trace_id in due:
            self.drop(trace_id, "ttl")
        return len(due)

    def release_one(self, reason: str = "pressure", kept: frozenset[str] = frozenset()) -> bool:
        """Release the pin worth least (the lowest-ranked trace's with a `rank`, else the lowest
        benefit; the oldest in `ttl` mode), leaving the pins of the `kept` traces. False if none."""
        candidates = [p for p in self.pins.values() if p.trace_id not in kept]
        if not candidates:
            return False
        if self.mode == "ttl":
            victim = min(candidates, key=lambda p: p.since)
        elif self.rank is not None:
            victim = max(candidates, key=lambda p: self.rank(p.trace_id))
        else:
            now = self.clock()
            victim = min(candidates, key=lambda p: self.benefit(p, now))
        return self.drop(victim.trace_id, reason)

    def release_all(self) -> None:
        for trace_id in list(self.pins):
            self.drop(trace_id, "end_trace" if self.mode == "benefit" else "ttl")

    def _unlock(self, pin: Pin, now: float) -> None:
        self.cache.unlock(pin.node)
        record = self.traces.record(pin.trace_id)
        record.pinned_seconds += now - pin.since
        record.pinned_tokens = 0

    # -- what pins hold -----------------------------------------------------------------------

    def exclusive_tokens(self, pin: Pin) -> int:
        """Tokens that become evictable if only this pin is released (no one else locks them)."""
        total, node = 0, pin.node
        while node is not self.cache.root and node.lock_ref == 1:
            total += len(node.key)
            node = node.parent
        return total

    def releasable(self, kept: frozenset[str] = frozenset()) -> int:
        """Tokens that releasing every pin but those of the `kept` traces would make evictable (held
        by those pins and nothing else)."""
        if self._epoch != self.cache.lock_epoch:
            self._releasable, self._epoch = {}, self.cache.lock_epoch
        if kept not in self._releasable:
            counts: dict[int, int] = {}
            nodes: dict[int, TreeNode] = {}
            for pin in self.pins.values():
                if pin.trace_id in kept:
                    continue
                for node in self.cache.path_nodes(pin.node):
                    counts[node.id] = counts.get(node.id, 0) + 1
                    nodes[node.id] = node
            self._releasable[kept] = sum(len(nodes[i].key) for i, c in counts.items() if nodes[i].lock_ref == c)
        return self._releasable[kept]

    def benefit(self, pin: Pin, now: float) -> float:
        """Expected prompt tokens saved per slot-second the pin still holds."""
        held = self.exclusive_tokens(pin)
        if held == 0:
            return float("inf")  # costs nothing: the path is locked by a running request anyway
        away = now - pin.since
        remaining = max(self.traces.expected_remaining_tool_seconds(pin.trace_id, away), MIN_REMAINING_S)
        return pin.length / (held * remaining)  # the path the next call reuses, per slot-second held

    def _refresh_gauge(self, trace_id: str) -> None:
        pin = self.pins.get(trace_id)
        if pin is not None:
            self.traces.record(trace_id).pinned_tokens = self.exclusive_tokens(pin)

    def pinned_paths(self) -> list[TreeNode]:
        """The node each pin locks (for the lock accounting of the integrity check, which also checks
        that each is still in the tree)."""
        return [p.node for p in self.pins.values()]

    def gauges(self) -> dict[str, int]:
        return {"pins": len(self.pins), "pinned_tokens": self.releasable(),
                **{f"pins_released_{k}": v for k, v in self.released.items()}}
