"""RadixAttention prefix cache: a radix tree from runs of token ids to the KV slots that hold them.

Every non-root node owns one edge: `key`, a run of token ids, and `value`, the KV slot indices of those
tokens (a 1-D int64 tensor of the same length). The path from the root to a node spells a token
prefix, and concatenating the values along it gives that prefix's KV slots. Slots held by the tree are
owned by nothing else (see kv_pool); they go back to the allocator only through `evict` and `reset`.

Locks are path-counted: locking a node adds one to `lock_ref` on it and on every ancestor below the
root, so a node's `lock_ref` is at least the sum of its children's. Nodes with `lock_ref == 0` are
evictable, and eviction removes unlocked leaves in least-recently-used order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .kv_pool import SlotAllocator


class IntegrityError(RuntimeError):
    """Raised when the tree's bookkeeping is inconsistent, or a lock/reset call would make it so."""


class TreeNode:
    """One edge of the radix tree; the root has an empty key and value."""

    _next_id = itertools.count()

    def __init__(self, key: list[int], value: torch.Tensor, parent: TreeNode | None, last_access: int = 0) -> None:
        self.children: dict[int, TreeNode] = {}  # keyed by the child's first token id
        self.parent = parent  # None for the root and for nodes no longer in a tree
        self.key = key
        self.value = value
        self.lock_ref = 0
        self.last_access = last_access  # logical clock of the last match/insert that walked through it
        self.id = next(TreeNode._next_id)


@dataclass
class MatchResult:
    """The longest cached prefix of a token sequence."""

    slots: torch.Tensor  # int64 KV slots of the matched prefix, `length` of them
    node: TreeNode  # deepest node whose path is exactly the matched prefix; the root when nothing matched
    length: int


def _empty_slots() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def _checked_ids(ids: Sequence[int] | torch.Tensor, slots: torch.Tensor) -> list[int]:
    """`ids` as a list, after checking that `slots` is a 1-D tensor of the same length."""
    key = _as_list(ids)
    if slots.dim() != 1 or slots.numel() != len(key):
        raise ValueError(f"slots must be 1-D with one entry per token: {len(key)} ids, slots {tuple(slots.shape)}")
    return key


def common_prefix_len(key: list[int], ids: list[int], start: int) -> int:
    """Length of the common prefix of `key` and `ids[start:]`."""
    n = min(len(key), len(ids) - start)
    if key[:n] == ids[start : start + n]:
        return n
    i = 0
    while key[i] == ids[start + i]:
        i += 1
    return i


class RadixCache:
    """Prefix cache over a SlotAllocator: match, insert, lock, and LRU-evict token prefixes
    (a `PrefixCache`)."""

    shares_prefixes = True

    def __init__(self, allocator: SlotAllocator) -> None:
        self.allocator = allocator
        self.root = TreeNode([], _empty_slots(), None)
        self._evictable_size = 0
        self._protected_size = 0
        self._clock = 0
        self.lock_epoch = 0  # bumped by every lock and unlock, so lock-derived figures can be cached

    @property
    def evictable_size(self) -> int:
        """Tokens held in unlocked nodes."""
        return self._evictable_size

    @property
    def protected_size(self) -> int:
        """Tokens held in locked nodes."""
        return self._protected_size

    @property
    def total_size(self) -> int:
        """Tokens (= KV slots) held by the tree."""
        return self._evictable_size + self._protected_size

    def match_prefix(self, ids: Sequence[int] | torch.Tensor) -> MatchResult:
        """Find the longest cached prefix of `ids`, marking its path as recently used.

        When the match ends inside an edge, that edge is split so the returned node's path is exactly
        the matched prefix.
        """
        key = _as_list(ids)
        now = self._tick()
        node, pos, values = self.root, 0, []
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            k = common_prefix_len(child.key, key, pos)
            if k < len(child.key):
                child = self._split(child, k)
            child.last_access = now
            values.append(child.value)
            node, pos = child, pos + k
        return MatchResult(torch.cat(values) if values else _empty_slots(), node, pos)

    def insert(self, ids: Sequence[int] | torch.Tensor, slots: torch.Tensor) -> int:
        """Cache `ids -> slots`; returns how long a prefix of `ids` was already cached before the call.

        The tree takes ownership of `slots[returned:]` only. For the already-cached part it keeps its
        own slots, so the caller must free `slots[p:returned]` itself, where `p` is the length of the
        prefix whose slots the caller got from the tree (its `match_prefix` length). Never frees.
        """
        key = _checked_ids(ids, slots)
        now = self._tick()
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                leaf = TreeNode(key[pos:], slots[pos:].to(torch.int64, copy=True), node, now)
                node.children[key[pos]] = leaf
                self._evictable_size += len(leaf.key)
                return pos
            k = common_prefix_len(child.key, key, pos)
            if k < len(child.key):
                child = self._split(child, k)
            child.last_access = now
            node, pos = child, pos + k
        return pos

    def lock(self, node: TreeNode) -> None:
        """Protect `node` and its ancestors from eviction (one more lock on each)."""
        self.lock_epoch += 1
        for n in self.path_nodes(node):
            if n.lock_ref == 0:
                self._evictable_size -= len(n.key)
                self._protected_size += len(n.key)
            n.lock_ref += 1

    def unlock(self, node: TreeNode) -> None:
        """Undo one `lock(node)`; raises IntegrityError (changing nothing) if `node` is not locked."""
        path = self.path_nodes(node)
        for n in path:
            if n.lock_ref <= 0:
                raise IntegrityError(f"unlock would make lock_ref of node {n.id} negative")
        self.lock_epoch += 1
        for n in path:
            n.lock_ref -= 1
            if n.lock_ref == 0:
                self._protected_size -= len(n.key)
                self._evictable_size += len(n.key)

    def evict(self, num_tokens: int) -> int:
        """Free unlocked leaves, least recently used first, until `num_tokens` slots are freed or
        nothing evictable is left; a parent left as an unlocked leaf becomes a candidate too.
        Returns the number of slots freed (possibly more than asked, as whole edges go)."""
        if num_tokens <= 0:
            return 0
        heap = [(n.last_access, n.id, n) for n in self._nodes() if not n.children and n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            if parent is None:
                raise IntegrityError(f"evictable leaf {leaf.id} has no parent")
            self.allocator.free(leaf.value)
            del parent.children[leaf.key[0]]
            leaf.parent = None
            freed += len(leaf.key)
            self._evictable_size -= len(leaf.key)
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, parent.id, parent))
        return freed

    def slots_in_tree(self) -> torch.Tensor:
        """Every KV slot the tree holds, in no particular order."""
        values = [n.value for n in self._nodes()]
        return torch.cat(values) if values else _empty_slots()

    def reset(self) -> None:
        """Free every slot back to the allocator and empty the tree; raises IntegrityError if locked."""
        if any(n.lock_ref for n in self._nodes()):
            raise IntegrityError("reset while nodes are locked")
        self.allocator.free(self.slots_in_tree())
        self.root = TreeNode([], _empty_slots(), None)  # old nodes now fail the `_path` check
        self._evictable_size = 0
        self._protected_size = 0

    def check_integrity(self) -> None:
        """Recheck every invariant of the tree; raises IntegrityError naming the first one broken."""
        root = self.root
        if root.key or root.value.numel() or root.parent is not None or root.lock_ref != 0:
            raise IntegrityError("root must have an empty key and value, no parent and no lock")
        evictable = protected = 0
        values: list[torch.Tensor] = []
        seen = {root.id}
        stack = [root]
        while stack:
            node = stack.pop()
            child_locks = 0
            for first, child in node.children.items():
                where = f"node {child.id} (under node {node.id})"
                if child.id in seen:
                    raise IntegrityError(f"{where} is reachable twice: the tree has a cycle or shared node")
                seen.add(child.id)
                if not child.key:
                    raise IntegrityError(f"{where} has an empty key")
                if child.key[0] != first:
                    raise IntegrityError(f"{where} is filed under token {first} but starts with {child.key[0]}; "
                                         "children are keyed by first token, and siblings must differ in it")
                if child.parent is not node:
                    raise IntegrityError(f"{where} has a parent pointer to another node")
                if child.value.dim() != 1 or child.value.dtype != torch.int64 or child.value.numel() != len(child.key):
                    raise IntegrityError(f"{where} value is not a 1-D int64 tensor as long as its key")
                if child.lock_ref < 0:
                    raise IntegrityError(f"{where} has negative lock_ref {child.lock_ref}")
                child_locks += child.lock_ref
                if child.lock_ref > 0:
                    protected += len(child.key)
                else:
                    evictable += len(child.key)
                values.append(child.value)
                stack.append(child)
            if node is not root and node.lock_ref < child_locks:
                raise IntegrityError(f"node {node.id} has lock_ref {node.lock_ref}, below its children's total "
                                     f"{child_locks}; locks must be path-counted")
        if (evictable, protected) != (self._evictable_size, self._protected_size):
            raise IntegrityError(f"sizes are evictable={self._evictable_size} protected={self._protected_size}, "
                                 f"but the nodes hold evictable={evictable} protected={protected}")
        slots = torch.cat(values) if values else _empty_slots()
        if ((slots < 1) | (slots >= self.allocator.num_slots)).any():
            raise IntegrityError("tree holds a slot outside 1..num_slots-1 (slot 0 is the scratch slot)")
        if torch.unique(slots).numel() != slots.numel():
            raise IntegrityError("a slot appears more than once in the tree")
        if torch.isin(slots, self.allocator.free_slots()).any():
            raise IntegrityError("a slot held by the tree is also on the allocator's free list")

    def check_locks(self, holders: Iterable[TreeNode]) -> None:
        """Reconcile locks with their holders: each node's `lock_ref` must equal the number of `holders`
        (one entry per lock taken: each live request's prefix node, each pin) at or below it."""
        expected: dict[int, int] = {}
        for holder in holders:
            for node in self.path_nodes(holder):
                expected[node.id] = expected.get(node.id, 0) + 1
        for node in self._nodes():
            if node.lock_ref != expected.get(node.id, 0):
                raise IntegrityError(f"node {node.id} has lock_ref {node.lock_ref} but "
                                     f"{expected.get(node.id, 0)} holders at or below it (a lock leaked or was lost)")

    def path_of(self, node: TreeNode) -> tuple[list[int], torch.Tensor]:
        """The token ids and KV slots from the root down to `node`."""
        path = self.path_nodes(node)[::-1]
        ids = [t for n in path for t in n.key]
        return ids, torch.cat([n.value for n in path]) if path else _empty_slots()

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _split(self, child: TreeNode, k: int) -> TreeNode:
        """Cut `child`'s edge after `k` tokens and return the new upper node. `child` keeps the lower
        part, so its path (and any reference a caller holds to it) is unchanged."""
        parent = child.parent
        if parent is None:
            raise IntegrityError(f"node {child.id} has no parent")
        head = TreeNode(child.key[:k], child.value[:k], parent, child.last_access)
        head.lock_ref = child.lock_ref
        head.children[child.key[k]] = child
        child.key, child.value, child.parent = child.key[k:], child.value[k:], head
        parent.children[head.key[0]] = head
        return head

    def path_nodes(self, node: TreeNode) -> list[TreeNode]:
        """`node` and its ancestors below the root; raises IntegrityError if `node` is not in this tree."""
        path = []
        while node is not self.root:
            if node.parent is None:
                raise IntegrityError(f"node {node.id} is not in this tree (evicted, reset, or foreign)")
            path.append(node)
            node = node.parent
        return path

    def _nodes(self) -> Iterator[TreeNode]:
        """Every node but the root."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())


class NoRadixCache:
    """The cache-off ablation: a `PrefixCache` that stores nothing and never matches."""

    shares_prefixes = False

    def __init__(self, allocator: SlotAllocator) -> None:
        self.allocator = allocator
        self.root = TreeNode([], _empty_slots(), None)
        self.lock_epoch = 0  # locks change nothing here

    @property
    def evictable_size(self) -> int:
        return 0

    @property
    def protected_size(self) -> int:
        return 0

    @property
    def total_size(self) -> int:
        return 0

    def match_prefix(self, ids: Sequence[int] | torch.Tensor) -> MatchResult:
        """Always the empty match at the root."""
        return MatchResult(_empty_slots(), self.root, 0)

    def insert(self, ids: Sequence[int] | torch.Tensor, slots: torch.Tensor) -> int:
        """Stores nothing and returns `len(ids)`, so the caller's duplicate-freeing frees all its slots."""
        return len(_checked_ids(ids, slots))

    def lock(self, node: TreeNode) -> None:
        """No-op: there is nothing to protect."""

    def unlock(self, node: TreeNode) -> None:
        """No-op: there is nothing to protect."""

    def evict(self, num_tokens: int) -> int:
        """Nothing to free; returns 0."""
        return 0

    def slots_in_tree(self) -> torch.Tensor:
        """Always empty."""
        return _empty_slots()

    def reset(self) -> None:
        """Nothing to free."""

    def check_locks(self, holders: Iterable[TreeNode]) -> None:
        """Every holder must hold the root: nothing else exists."""
        if any(h is not self.root for h in holders):
            raise IntegrityError("NoRadixCache: a request holds a node other than the root")

    def path_of(self, node: TreeNode) -> tuple[list[int], torch.Tensor]:
        """The empty path: the root is the only node."""
        self.path_nodes(node)
        return [], _empty_slots()

    def path_nodes(self, node: TreeNode) -> list[TreeNode]:
        """No nodes below the root; raises IntegrityError for any node but the root."""
        if node is not self.root:
            raise IntegrityError(f"node {node.id} is not in this cache (NoRadixCache holds only its root)")
        return []

    def check_integrity(self) -> None:
        """Checks that nothing was stored."""
        if self.root.children:
            raise IntegrityError("NoRadixCache must store nothing, but its root has children")
