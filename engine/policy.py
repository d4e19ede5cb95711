"""Waiting-queue orderings: which waiting request to admit first.

- `fcfs`: arrival order.
- `lpm`: longest cached prefix first, so requests that reuse the tree run while it still holds them.
- `dfs-weight`: walk the tree depth first, heaviest subtree (most waiting requests under it) first,
  so requests sharing a prefix are admitted together.
- `program`: schedule whole agents, not calls (after Autellix): calls of the trace with the least
  attained service (tokens computed for it so far, in doubling levels of `SERVICE_QUANTUM`) first;
  within a level the trace that started first, so agents finish instead of all advancing slowly and a
  trace's calls stay together; then lpm. A call without a trace is a program of its own. The levels
  are coarse (2048 tokens, then doublings) so that agents of similar size share a level and run in
  the order they started (program-level FCFS, as Continuum), while a much longer program gives way to
  new ones (as Autellix). With trace retention, this order also decides whose pins admission may
  release (see trace_retention.py), and program admission (`may_start_program`) starts a new program
  only while fewer run than the KV pool holds the working sets of, so that the programs running keep
  their paths instead of all thrashing the pool together. A program held back may still run its
  first call ahead (`may_run_ahead`), on room no pin holds, so that its first tool runs meanwhile.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Iterable, Sequence

from .prefix_cache import PrefixCache
from .radix_cache import TreeNode
from .request import Request

if TYPE_CHECKING:
    from .traces import TraceTable

POLICIES = ("lpm", "dfs-weight", "fcfs", "program")
SERVICE_QUANTUM = 2048  # tokens of attained service in the first level of the program policy
# Matching every waiting prompt each round costs time; past this queue length, fall back to fcfs.
MAX_QUEUE_FOR_MATCHING = 256


def order_waiting(waiting: Sequence[Request], policy: str, cache: PrefixCache,
                  traces: TraceTable | None = None) -> list[Request]:
    """Return the waiting requests in admission order for `policy` (`program` needs `traces`)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "program" and traces is None:
        raise ValueError("the program policy needs the engine's trace table")
    if policy == "fcfs" or (policy != "program" and len(waiting) > MAX_QUEUE_FOR_MATCHING):
        return list(waiting)
    if policy == "program" and len(waiting) > MAX_QUEUE_FOR_MATCHING:
        return sorted(waiting, key=lambda r: _program_key(r, traces, 0))
    matches = {id(r): cache.match_prefix(r.fill_ids[: r.fill_len - 1]) for r in waiting}
    if policy == "lpm":
        return sorted(waiting, key=lambda r: -matches[id(r)].length)
    if policy == "program":
        return sorted(waiting, key=lambda r: _program_key(r, traces, matches[id(r)].length))
    return _dfs_weight_order(waiting, {id(r): matches[id(r)].node for r in waiting})


def service_level(attained: int) -> int:
    """0 below SERVICE_QUANTUM tokens, then one more per doubling."""
    return (attained // SERVICE_QUANTUM).bit_length()


ProgramRank = tuple[int, tuple[float, int]]
LAST_RANK: ProgramRank = (sys.maxsize, (math.inf, 0))


def program_rank(req: Request, traces: TraceTable) -> ProgramRank:
    """Where the request's program stands in the program policy (smaller goes first)."""
    return service_level(traces.attained(req.trace_id)), traces.started(req)


def trace_rank(trace_id: str, traces: TraceTable) -> ProgramRank:
    """Where a trace's next call would stand in the program policy; a trace no longer open ranks last."""
    started = traces.trace_started(trace_id)
    return LAST_RANK if started is None else (service_level(traces.attained(trace_id)), started)


def ranked_at_or_above(req: Request, trace_ids: Iterable[str], traces: TraceTable) -> frozenset[str]:
    """The traces among `trace_ids` that the program policy puts at or above `req`'s program (its own included)."""
    rank = program_rank(req, traces)
    return frozenset(t for t in trace_ids if trace_rank(t, traces) <= rank)


def program_limit(traces: TraceTable, capacity: int) -> int:
    """How many programs may run at once on a KV pool of `capacity` tokens: as many as the pool holds
    the expected working sets of, the shared prefix counted once (at least one); unlimited until a
    working set is known."""
    own, shared = traces.expected_working_set()
    return max(1, int((capacity - shared) // own)) if own > 0 else sys.maxsize


def may_start_program(req: Request, traces: TraceTable, capacity: int, stale_s: float) -> bool:
    """Program admission: a call may start a new program (the first admitted call of its trace) only
    while fewer than `program_limit` programs are running (traces away for `stale_s` or longer are not
    counted). Calls of started programs, and calls without a trace, always may."""
    if req.trace_id is None or traces.is_started(req.trace_id):
        return True
    return traces.started_programs(stale_s) < program_limit(traces, capacity)


def may_run_ahead(req: Request, traces: TraceTable) -> bool:
    """Whether a call that program admission holds back may run ahead of it: only its trace's first
    call. It runs without starting the program (not counted by `may_start_program`, its path not
    pinned) and only on room that no pin holds (the scheduler's part), so it takes nothing from the
    programs running; its agent's first tool then runs while the program waits, instead of at the
    end of the run, and the program's second call waits for admission as the first would have."""
    return req.trace_id is not None and traces.none_admitted(req.trace_id)


def _program_key(req: Request, traces: TraceTable, matched: int) -> tuple[int, tuple[float, int], int]:
    return *program_rank(req, traces), -matched


def _dfs_weight_order(waiting: Sequence[Request], nodes: dict[int, TreeNode]) -> list[Request]:
    by_node: dict[int, list[Request]] = {}
    weight: dict[int, int] = {}
    root = None
    for req in waiting:
        node = nodes[id(req)]
        by_node.setdefault(id(node), []).append(req)
        while node is not None:
            weight[id(node)] = weight.get(id(node), 0) + 1
            root, node = node, node.parent
    order: list[Request] = []
    stack = [root]
    while stack:
        node = stack.pop()
        order.extend(by_node.get(id(node), ()))
        children = [c for c in node.children.values() if id(c) in weight]
        children.sort(key=lambda c: weight[id(c)])
        stack.extend(children)
    return order
