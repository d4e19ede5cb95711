"""Cache-aware continuous batching: prefill first, admission against free + evictable − reserved
output budget, chunked prefill, in-round dedup of siblings, and retraction under memory pressure.

The scheduler decides *what* runs next and keeps KV ownership straight (through KVManager); the
engine runs the forward and feeds sampled tokens back through `finish_step`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .decoding import Decoding
from .kv_manager import KVManager
from .model.context import ForwardMode
from .policy import may_run_ahead, may_start_program, order_waiting, ranked_at_or_above
from .request import FinishReason, Request, ReqStatus, describe
from .trace_retention import ANY_PIN, PinGrant

if TYPE_CHECKING:
    from .engine import EngineConfig
    from .traces import TraceTable


@dataclass
class Batch:
    """One forward pass: EXTEND computes `extend_lens[i]` tokens of `reqs[i]` from its kv_len on;
    DECODE computes one token per request. `sampling` are the requests whose last computed position
    yields a next token in this pass. `ghosts` are finished requests whose last sampled token gets
    its KV computed in this pass (no logits) so the tree holds their whole sequence."""

    mode: ForwardMode
    reqs: list[Request]
    extend_lens: list[int] = field(default_factory=list)
    ghosts: list[Request] = field(default_factory=list)
    sampling: list[Request] = field(init=False)

    def __post_init__(self) -> None:
        if self.mode is ForwardMode.DECODE:
            self.sampling = list(self.reqs)
        else:
            self.sampling = [r for r, n in zip(self.reqs, self.extend_lens) if r.kv_len + n == r.fill_len]

    @property
    def computed_tokens(self) -> int:
        """Tokens whose KV this pass computes."""
        own = sum(self.extend_lens) if self.mode is ForwardMode.EXTEND else len(self.reqs)
        return own + len(self.ghosts)

    def pending(self, req: Request) -> int:
        """Slots allocated for `req` in this pass (past its kv_len)."""
        if req in self.ghosts or self.mode is ForwardMode.DECODE:
            return 1
        return self.extend_lens[self.reqs.index(req)]

    def without(self, drop: list[Request]) -> "Batch":
        """The same pass minus the `drop` requests."""
        keep = [i for i, r in enumerate(self.reqs) if r not in drop]
        lens = [self.extend_lens[i] for i in keep] if self.mode is ForwardMode.EXTEND else []
        return Batch(self.mode, [self.reqs[i] for i in keep], lens, [g for g in self.ghosts if g not in drop])

    def only(self, req: Request) -> "Batch":
        """A pass of `req` alone (to find out whether it is the one a failing pass fails on)."""
        return self.without([r for r in self.reqs + self.ghosts if r is not req])


class Scheduler:
    """Waiting queue, running set and admission; see the module docstring."""

    def __init__(self, kv: KVManager, config: "EngineConfig", decoding: Decoding,
                 traces: "TraceTable | None" = None) -> None:
        """`config` supplies policy, chunk_size, max_running_requests, reserve_clip and dedup_min_shared;
        `traces` (when given) is told of admissions and computed tokens for trace retention."""
        self.kv, self.cfg, self.decoding, self.traces = kv, config, decoding, traces
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.chunked: Request | None = None
        self.finishing: list[Request] = []
        self.retractions = 0
        self.calls_run_ahead = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked or self.finishing)

    def live(self) -> list[Request]:
        """Requests holding KV rows."""
        extra = [self.chunked] if self.chunked else []
        return self.running + self.finishing + extra

    def only_ghosts_pending(self) -> bool:
        """True when the only work left is computing finished requests' last-token KV."""
        return bool(self.finishing) and not (self.waiting or self.running or self.chunked)

    def next_batch(self, allow_ghost_only: bool = True) -> Batch | None:
        """The next forward pass, or None when idle. With `allow_ghost_only` false, pending ghost passes
        wait to ride along with the next real batch instead of running alone."""
        if not allow_ghost_only and self.only_ghosts_pending():
            return None
        batch = self._schedule_extend()
        if batch is None and self.waiting and not self.running and self.finishing:
            self._retract_one()  # pending ghost passes must not block the only admissible work
            batch = self._schedule_extend()
        if batch is None and (self.running or self.finishing):
            batch = self._schedule_decode()
        return batch

    def _schedule_extend(self) -> Batch | None:
        budget = self.cfg.chunk_size
        reqs: list[Request] = []
        lens: list[int] = []
        if self.chunked is not None:
            req, self.chunked = self.chunked, None
            n = min(req.fill_len - req.kv_len, budget)
            while self.kv.available() < n and self._retract_one(exclude=req):
                pass
            n = min(n, self.kv.available())
            if n == 0:
                self._requeue(req)
            else:
                self.kv.extend_slots(req, n)
                reqs.append(req)
                lens.append(n)
                budget -= n
                if req.kv_len + n < req.fill_len:
                    self.chunked = req
        pending = [(r, r.fill_len - r.kv_len) for r in self.running]
        if any(n > 1 for _, n in pending):
            # Grammar-forced tokens (jump-forward) are computed in extend passes; the other running
            # requests ride along with their one new token, so a round stays one pass. A run longer
            # than the chunk budget or the free KV is split across rounds (sampled after its last part).
            for req, n in pending:
                n = min(n, budget, self.kv.available())
                if n > 0:
                    self.kv.extend_slots(req, n)
                    reqs.append(req)
                    lens.append(n)
                    budget -= n
        reserved = sum(min(r.remaining_output, self.cfg.reserve_clip) for r in self.running)
        waiting = order_waiting(self.waiting, self.cfg.policy, self.kv.cache, self.traces) if self.waiting else []
        for req in waiting:
            if self.chunked is not None or budget <= 0:
                break
            if len(self.running) + len(reqs) >= self.cfg.max_running_requests or self.kv.rows.available == 0:
                break
            idle = not self.running and not reqs
            ahead = not idle and not self._may_start(req)
            if ahead and not may_run_ahead(req, self.traces):
                continue  # a new program waits for room; calls of running programs go on
            self.kv.match_and_lock(req)
            if self._sibling_computes_prefix(req, reqs):
                self.kv.abandon(req)
                continue
            todo = req.fill_len - req.kv_len
            n = min(todo, budget)
            reserve = min(req.remaining_output, self.cfg.reserve_clip)
            if idle:
                reserve = 0  # alone, it may run on what is left: retraction covers its growth
            grant = self._pin_grant(req, idle, ahead)
            if self.kv.available(grant=grant) - reserved < todo + reserve:
                self.kv.abandon(req)
                if ahead:
                    continue  # a call running ahead never ends the round for the calls after it
                break
            reserved += reserve
            if self.finishing and self.kv.available(include_pins=False) < n:
                self.drop_ghost_passes()  # a finished request's last-token pass is worth less than a trace's pin
            self.waiting.remove(req)
            req.status = ReqStatus.PREFILLING
            if req.cached_tokens is None:
                req.cached_tokens = req.prefix_len
            if self.traces is not None:
                self.traces.on_admit(req, ahead)
            self.calls_run_ahead += ahead
            self.kv.admitted(req)
            self.kv.extend_slots(req, n, grant)
            reqs.append(req)
            lens.append(n)
            budget -= n
            if n < todo:
                self.chunked = req
        if not reqs:
            return None
        ghosts = self._take_ghosts()
        return Batch(ForwardMode.EXTEND, reqs, lens, ghosts)

    def _may_start(self, req: Request) -> bool:
        """Program admission (program policy with trace retention): see policy.may_start_program."""
        retention = self.kv.retention
        if self.cfg.policy != "program" or retention is None:
            return True
        return may_start_program(req, self.traces, retention.capacity, self.cfg.trace_ttl_s)

    def _pin_grant(self, req: Request, idle: bool, ahead: bool) -> PinGrant:
        """The trace pins admitting `req` may release: under the program policy not those of traces
        ranked at or above it, unless the engine would otherwise sit `idle`, and none for a call
        running `ahead` of program admission; under the others, any."""
        retention = self.kv.retention
        if self.cfg.policy != "program" or retention is None or not retention.pins:
            return ANY_PIN
        if ahead:
            return PinGrant(frozenset(retention.pins))
        return PinGrant(ranked_at_or_above(req, retention.pins, self.traces), idle)

    def _sibling_computes_prefix(self, req: Request, batch: list[Request]) -> bool:
        """True when a request admitted this round will compute the next `dedup_min_shared` tokens of
        `req`'s uncached part: `req` then waits a round and reuses them from the tree."""
        start, width = req.kv_len, self.cfg.dedup_min_shared
        if not self.kv.shares_prefixes or req.fill_len - start < width:
            return False
        head = req.fill_ids[start : start + width]
        return any(other.fill_ids[start : start + width] == head for other in batch)

    def _schedule_decode(self) -> Batch | None:
        while self.kv.available() < len(self.running) and self._retract_one():
            pass
        ready = [r for r in self.running if r.fill_len - r.kv_len == 1]
        for req in ready:
            self.kv.extend_slots(req, 1)
        batch = Batch(ForwardMode.DECODE, ready, ghosts=self._take_ghosts())
        return batch if batch.reqs or batch.ghosts else None

    def _take_ghosts(self) -> list[Request]:
        """Finished requests that get their last token's KV in this pass; the rest release now."""
        ghosts, self.finishing = self.finishing, []
        room = self.kv.available(include_pins=False)
        kept = []
        for req in ghosts:
            if room > 0 and req.fill_len - req.kv_len == 1:
                self.kv.extend_slots(req, 1)
                room -= 1
                kept.append(req)
            else:
                self.kv.release(req)
        return kept

    def drop_ghost_passes(self) -> bool:
        """Release finished requests without computing their last token's KV; False if there were none."""
        if not self.finishing:
            return False
        for req in self.finishing:
            self.kv.release(req)
        self.finishing = []
        return True

    def _retract_one(self, exclude: Request | None = None) -> bool:
        """Free memory: first drop pending ghost passes, then requeue the least-progressed running
        request. Returns False when there was nothing to free."""
        if self.drop_ghost_passes():
            return True
        victims = [r for r in self.running if r is not exclude]
        if not victims:
            return False
        victim = min(victims, key=lambda r: (len(r.output_ids), -len(r.prompt_ids)))
        self.running.remove(victim)
        self._requeue(victim)
        return True

    def _requeue(self, req: Request) -> None:
        """Hand the request's KV to the cache and put it back at the head of the waiting queue."""
        self.kv.release(req)
        req.status = ReqStatus.WAITING
        req.retractions += 1
        self.retractions += 1
        self.waiting.appendleft(req)

    def finish_step(self, batch: Batch, next_tokens: list[int], logprobs: list[float] | None = None,
                    top_logprobs: list[list[tuple[float, int]]] | None = None) -> list[Request]:
        """Advance KV counters, append sampled tokens and return the requests that finished."""
        for req in batch.ghosts:
            req.kv_len += 1
            self.kv.release(req)
        for req, n in zip(batch.reqs, batch.extend_lens or [1] * len(batch.reqs)):
            req.kv_len += n
            if self.traces is not None:
                self.traces.on_computed(req, n)
            if batch.mode is ForwardMode.EXTEND:
                # Share what was just computed with requests admitted in later rounds.
                self.kv.checkpoint(req)
        finished = []
        for i, (req, token) in enumerate(zip(batch.sampling, next_tokens)):
            if req.prefix_only:
                reason = FinishReason.STOP
            else:
                try:
                    reason = self.decoding.append(req, token, logprobs[i] if logprobs else 0.0,
                                                  top_logprobs[i] if top_logprobs else [])
                except Exception as exc:  # a grammar or stop-string failure ends this request only
                    self.fail(req, f"decoding failed after token {token}: {describe(exc)}")
                    finished.append(req)
                    continue
            if req.status is ReqStatus.PREFILLING:
                req.status = ReqStatus.DECODING
                self.running.append(req)
            if reason is not None:
                req.status, req.finish_reason = ReqStatus.FINISHED, reason
                self.running.remove(req)
                # Share the output's KV now: the agent's next call may be admitted before the ghost pass.
                self.kv.checkpoint(req)
                self.finishing.append(req)
                finished.append(req)
        return finished

    def fail(self, req: Request, message: str, pending: int = 0) -> None:
        """End `req` with an error wherever it is (waiting, prefilling, running, chunked, or a ghost
        pass), freeing the `pending` slots allocated for the current pass, its KV, row and locks."""
        for queue in (self.waiting, self.running, self.finishing):
            if req in queue:
                queue.remove(req)
        if req is self.chunked:
            self.chunked = None
        self.kv.drop_pending(req, pending)
        self.kv.release(req)
        if req.status is not ReqStatus.FINISHED:  # a ghost already reported its result
            req.status, req.finish_reason, req.error = ReqStatus.FINISHED, FinishReason.ERROR, message

    def abort(self, rid: str) -> Request | None:
        """Remove a request wherever it is; returns it, or None if unknown or already finished."""
        for req in list(self.waiting):
            if req.rid == rid:
                self.waiting.remove(req)
                req.status, req.finish_reason = ReqStatus.FINISHED, FinishReason.ABORT
                return req
        for req in self.running + ([self.chunked] if self.chunked else []):
            if req.rid == rid:
                if req is self.chunked:
                    self.chunked = None
                else:
                    self.running.remove(req)
                self.kv.release(req)
                req.status, req.finish_reason = ReqStatus.FINISHED, FinishReason.ABORT
                return req
        return None
