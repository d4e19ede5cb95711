"""RadixCache against a reference model: a hypothesis state machine of inserts, matches, locks and
evictions, checking every invariant after each step."""

from __future__ import annotations

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from radixlm.engine.kv_pool import SlotAllocator
from radixlm.engine.radix_cache import RadixCache
from test_radix_cache import conserved


SEQS = st.lists(st.integers(0, 3), min_size=1, max_size=8)
NUM_SLOTS = 48


def tree_map(cache: RadixCache) -> tuple[dict[tuple[int, ...], int], dict[tuple[int, ...], int]]:
    """Read straight off the tree: every cached prefix -> the slot of its last token, and the full
    path of every node -> the node's edge length."""
    slots: dict[tuple[int, ...], int] = {}
    edges: dict[tuple[int, ...], int] = {}
    stack = [((), cache.root)]
    while stack:
        path, node = stack.pop()
        for child in node.children.values():
            p = path
            for tok, slot in zip(child.key, child.value.tolist()):
                p = p + (tok,)
                slots[p] = slot
            edges[p] = len(child.key)
            stack.append((p, child))
    return slots, edges


class RadixCacheMachine(RuleBasedStateMachine):
    """Model: `ref` maps each cached prefix to its last token's slot (a prefix-closed set), `tick` to
    the last operation that walked through it, and `locks` counts locks covering it."""

    @initialize()
    def setup(self):
        self.alloc = SlotAllocator(NUM_SLOTS)
        self.cache = RadixCache(self.alloc)
        self.ref: dict[tuple[int, ...], int] = {}
        self.tick: dict[tuple[int, ...], int] = {}
        self.locks: dict[tuple[int, ...], int] = {}
        self.held: list[tuple[object, tuple[int, ...]]] = []
        self.clock = 0

    def present(self, seq: list[int]) -> int:
        n = 0
        while n < len(seq) and tuple(seq[: n + 1]) in self.ref:
            n += 1
        return n

    def touch(self, seq: list[int], n: int) -> None:
        self.clock += 1
        for i in range(1, n + 1):
            self.tick[tuple(seq[:i])] = self.clock

    def do_match(self, seq: list[int]):
        expected = self.present(seq)
        m = self.cache.match_prefix(seq)
        assert m.length == expected
        assert m.slots.tolist() == [self.ref[tuple(seq[: i + 1])] for i in range(expected)]
        self.touch(seq, expected)
        return m

    def do_insert(self, seq: list[int], prefix: torch.Tensor) -> None:
        """Insert `seq` whose first len(prefix) slots came from the tree, like the engine."""
        need = len(seq) - len(prefix)
        if self.alloc.available < need:
            self.do_evict(need - self.alloc.available)
        if self.alloc.available < need:
            return
        slots = torch.cat([prefix, self.alloc.alloc(need)])
        expected = self.present(seq)
        got = self.cache.insert(seq, slots)
        assert got == expected and got >= len(prefix)
        self.alloc.free(slots[len(prefix) : got])
        for i in range(got, len(seq)):
            self.ref[tuple(seq[: i + 1])] = int(slots[i])
        self.touch(seq, len(seq))

    def do_evict(self, n: int) -> None:
        before = set(self.ref)
        edges_before = tree_map(self.cache)[1]
        freed = self.cache.evict(n)
        after, edges_after = tree_map(self.cache)
        assert all(self.ref.get(p) == s for p, s in after.items()), "tree changed a surviving prefix's slot"
        gone = before - set(after)
        assert freed == len(gone)
        assert all(self.locks.get(p, 0) == 0 for p in gone), "a locked prefix was evicted"
        free = set(self.alloc.free_slots().tolist())
        assert all(self.ref[p] in free for p in gone), "an evicted slot did not return to the allocator"
        leaves = [p for p in after if self.locks.get(p, 0) == 0 and not any(p + (t,) in after for t in range(4))]
        if freed < n:
            assert not leaves, "stopped early with evictable tokens left"
        if gone:
            last = max(self.tick[p] for p in gone)
            if leaves:  # LRU: nothing left evictable is older than what went
                assert min(self.tick[p] for p in leaves) >= last
            # whole edges go, but no more once enough is freed: without the last edge it was short
            last_edges = [k for p, k in edges_before.items() if p not in edges_after and self.tick[p] == last]
            assert any(freed - k < n for k in last_edges), "evicted past the requested amount"
        for p in gone:
            del self.ref[p], self.tick[p]

    @rule(seq=SEQS)
    def insert_fresh(self, seq):
        self.do_insert(seq, torch.empty(0, dtype=torch.int64))

    @rule(seq=SEQS)
    def insert_after_match(self, seq):
        m = self.do_match(seq)
        self.cache.lock(m.node)  # the engine holds the prefix while it allocates the rest
        self.do_insert(seq, m.slots)
        self.cache.unlock(m.node)

    @rule(seq=SEQS)
    def match(self, seq):
        self.do_match(seq)

    @rule(seq=SEQS)
    def lock(self, seq):
        m = self.do_match(seq)
        path = tuple(seq[: m.length])
        self.cache.lock(m.node)
        self.held.append((m.node, path))
        for i in range(1, len(path) + 1):
            self.locks[path[:i]] = self.locks.get(path[:i], 0) + 1

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def unlock(self, data):
        node, path = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.cache.unlock(node)
        for i in range(1, len(path) + 1):
            self.locks[path[:i]] -= 1

    @rule(n=st.integers(0, 30))
    def evict(self, n):
        self.do_evict(n)

    @precondition(lambda self: not self.held)
    @rule()
    def reset(self):
        self.cache.reset()
        self.ref.clear()
        self.tick.clear()

    @invariant()
    def consistent(self):
        self.cache.check_integrity()
        assert conserved(self.alloc, self.cache)
        assert tree_map(self.cache)[0] == self.ref
        protected = sum(1 for p in self.ref if self.locks.get(p, 0) > 0)
        assert (self.cache.protected_size, self.cache.total_size) == (protected, len(self.ref))
        for _, path in self.held:  # locked paths stay fully matchable
            assert all(path[:i] in self.ref for i in range(1, len(path) + 1))


RadixCacheMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_radix_cache_model = RadixCacheMachine.TestCase
