"""KV ownership of requests: prefix matching, slot allocation with eviction, and handing a request's
KV over to the radix cache when it pauses (chunked prefill), is retracted, or finishes.

Invariant kept here: every allocatable slot is in exactly one of the allocator's free list, the radix
tree, or one live request's private range `req_to_token[row, prefix_len:kv_len]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch

from .kv_pool import KVPool, OutOfSlotsError, ReqToTokenPool
from .prefix_cache import PrefixCache
from .radix_cache import IntegrityError, TreeNode
from .request import Request
from .trace_retention import ANY_PIN, PinGrant

if TYPE_CHECKING:
    from .trace_retention import TraceRetention


class KVManager:
    """Owns the pool, the request rows and the prefix cache; moves slots between them."""

    def __init__(self, pool: KVPool, rows: ReqToTokenPool, cache: PrefixCache) -> None:
        self.pool, self.rows, self.cache = pool, rows, cache
        self.evicted_tokens = 0
        self.retention: TraceRetention | None = None  # pins of agent traces in a tool (trace_retention.py)

    @property
    def table(self) -> torch.Tensor:
        return self.rows.table

    def available(self, include_pins: bool = True, grant: PinGrant = ANY_PIN) -> int:
        """Slots obtainable now: free plus evictable, plus (unless told not to) what only the trace
        pins that `grant` lets go of hold."""
        pinned = self.retention.releasable(grant.kept) if self.retention is not None and include_pins else 0
        return self.pool.allocator.available + self.cache.evictable_size + pinned

    def alloc(self, n: int, grant: PinGrant = ANY_PIN) -> torch.Tensor:
        """Allocate `n` slots, evicting LRU cache leaves first if the free list is short, then
        releasing the trace pins `grant` allows (those worth least first) while it still is."""
        allocator = self.pool.allocator
        if n > allocator.available:
            self.evicted_tokens += self.cache.evict(n - allocator.available)
            if self.retention is not None:
                for reason, kept in (("pressure", grant.ahead), ("idle", grant.kept)):
                    while n > allocator.available and self.retention.release_one(reason, kept):
                        self.evicted_tokens += self.cache.evict(n - allocator.available)
        return allocator.alloc(n)

    def match_and_lock(self, req: Request) -> None:
        """Point the request at its longest cached prefix (always leaving one token to compute) and lock it."""
        ids = req.fill_ids
        limit = len(ids) - 1
        start = req.prompt_logprob_from
        if start is not None and not req.prompt_logprobs:
            limit = min(limit, max(start - 1, 0))  # positions with prompt logprobs must be recomputed
        match = self.cache.match_prefix(ids[:limit])
        self.cache.lock(match.node)
        req.prefix_node, req.prefix_len, req.kv_len = match.node, match.length, match.length
        if req.row is None:
            req.row = self.rows.alloc()
        self.table[req.row, : match.length] = match.slots

    def admitted(self, req: Request) -> None:
        """The request was admitted holding its own lock on its prefix: its trace's pin can go."""
        if self.retention is not None:
            self.retention.on_admit(req)

    def abandon(self, req: Request) -> None:
        """Undo `match_and_lock` for a request that is not admitted after all (it owns no slots yet)."""
        self.cache.unlock(req.prefix_node)
        self.rows.free(req.row)
        req.row, req.prefix_node, req.prefix_len, req.kv_len = None, None, 0, 0

    def extend_slots(self, req: Request, n: int, grant: PinGrant = ANY_PIN) -> torch.Tensor:
        """Allocate `n` new slots for the request's next tokens and record them in its row."""
        slots = self.alloc(n, grant)
        self.table[req.row, req.kv_len : req.kv_len + n] = slots
        return slots

    @property
    def shares_prefixes(self) -> bool:
        """False for the no-op cache: nothing computed is ever reused."""
        return self.cache.shares_prefixes

    def checkpoint(self, req: Request) -> None:
        """Share a request's computed prefix through the tree while it keeps running; the no-op cache
        keeps nothing, so there the request keeps its slots private."""
        if self.shares_prefixes:
            self.commit_to_cache(req)

    def commit_to_cache(self, req: Request) -> None:
        """Insert the request's computed KV into the tree and re-lock its new, longer prefix.

        Slots this request computed for tokens another request inserted meanwhile are freed (the no-op
        cache declines them all); the row then lists the tree's slots."""
        ids = req.fill_ids[: req.kv_len]
        slots = self.table[req.row, : req.kv_len].clone()
        present = self.cache.insert(ids, slots)
        if present > req.prefix_len:
            self.pool.allocator.free(slots[req.prefix_len : present])
        match = self.cache.match_prefix(ids)
        self.cache.lock(match.node)
        self.cache.unlock(req.prefix_node)
        self.table[req.row, : match.length] = match.slots
        req.prefix_node, req.prefix_len, req.kv_len = match.node, match.length, match.length

    def drop_pending(self, req: Request, n: int) -> None:
        """Free the `n` slots allocated past `kv_len` for a pass that the request no longer takes part in."""
        if n and req.row is not None:
            self.pool.allocator.free(self.table[req.row, req.kv_len : req.kv_len + n].clone())

    def release(self, req: Request) -> None:
        """Give all of the request's KV to the cache (or the free list) and free its row."""
        if req.row is None:
            return
        self.commit_to_cache(req)
        node, length = req.prefix_node, req.prefix_len
        self.cache.unlock(node)
        self.rows.free(req.row)
        req.row, req.prefix_node, req.prefix_len, req.kv_len = None, None, 0, 0
        if self.retention is not None:
            self.retention.on_release(req, node, length)  # nothing ran since the unlock: node is in the tree

    def check_integrity(self, live: Iterable[Request]) -> None:
        """Every allocatable slot is owned exactly once: free list, tree, or one request's private range;
        every lock has a holder (a live request's prefix, or a trace pin) and every holder its lock;
        each live request's row lists its tree path's slots for its prefix; no request row leaked."""
        self.cache.check_integrity()
        owned = [self.pool.allocator.free_slots(), self.cache.slots_in_tree()]
        holders: list[TreeNode] = []
        rows: set[int] = set()
        if self.retention is not None:
            holders += self.retention.pinned_paths()
        for req in live:
            if req.row is None:
                continue
            if req.row in rows:
                raise IntegrityError(f"request row {req.row} is held by two requests")
            rows.add(req.row)
            holders.append(req.prefix_node)
            owned.append(self.table[req.row, req.prefix_len : req.kv_len])
            ids, slots = self.cache.path_of(req.prefix_node)
            if ids != req.fill_ids[: req.prefix_len] or not torch.equal(self.table[req.row, : req.prefix_len], slots):
                raise IntegrityError(f"request {req.rid}: its prefix ({req.prefix_len} tokens) is not the tree path "
                                     f"it holds ({len(ids)} tokens), or its row lists other slots")
        if len(rows) + self.rows.available != self.table.shape[0]:
            raise IntegrityError(f"request rows leaked: {len(rows)} held by live requests, {self.rows.available} free, "
                                 f"{self.table.shape[0]} in all")
        self.cache.check_locks(holders)
        every = torch.cat(owned)
        capacity = self.pool.allocator.capacity
        if every.numel() != capacity or torch.unique(every).numel() != capacity:
            raise IntegrityError(
                f"KV slot ownership broken: {every.numel()} owned entries, "
                f"{torch.unique(every).numel()} distinct, capacity {capacity}"
            )
        if bool((every == 0).any()):
            raise IntegrityError("scratch slot 0 is owned by someone")


__all__ = ["KVManager", "OutOfSlotsError"]
