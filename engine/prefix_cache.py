"""The prefix cache interface: what the KV manager, the scheduler's policies and trace retention may
ask of a cache of computed KV prefixes. `RadixCache` is the real one; `NoRadixCache` is its no-op
twin (the cache-off ablation) that stores nothing and matches nothing.

Slots a cache holds are owned by nothing else; they go back to the allocator only through `evict`
and `reset`. Locks are path-counted (locking a node locks its ancestors too) and a locked node is
never evicted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol, Sequence, runtime_checkable

import torch

if TYPE_CHECKING:
    from .kv_pool import SlotAllocator
    from .radix_cache import MatchResult, TreeNode


@runtime_checkable
class PrefixCache(Protocol):
    """Token prefixes -> the KV slots that hold them, with locks and LRU eviction."""

    allocator: SlotAllocator
    root: TreeNode  # the empty prefix: what a request that matched nothing holds its lock on
    lock_epoch: int  # changes with every lock and unlock, so lock-derived figures can be cached
    shares_prefixes: bool  # False for the no-op cache: nothing computed is ever reused

    @property
    def evictable_size(self) -> int:
        """Tokens held in unlocked nodes."""

    @property
    def protected_size(self) -> int:
        """Tokens held in locked nodes."""

    @property
    def total_size(self) -> int:
        """Tokens (= KV slots) held."""

    def match_prefix(self, ids: Sequence[int] | torch.Tensor) -> MatchResult:
        """The longest cached prefix of `ids` (its node's path is exactly that prefix)."""

    def insert(self, ids: Sequence[int] | torch.Tensor, slots: torch.Tensor) -> int:
        """Cache `ids -> slots`; returns how long a prefix of `ids` was cached before. The cache takes
        ownership of `slots[returned:]` only; the caller frees the duplicates it computed."""

    def lock(self, node: TreeNode) -> None:
        """Protect `node` and its ancestors from eviction (one more lock on each)."""

    def unlock(self, node: TreeNode) -> None:
        """Undo one `lock(node)`."""

    def evict(self, num_tokens: int) -> int:
        """Free unlocked leaves, least recently used first, until `num_tokens` slots are freed;
        returns the number freed."""

    def slots_in_tree(self) -> torch.Tensor:
        """Every KV slot held, in no particular order."""

    def reset(self) -> None:
        """Free every slot and hold nothing; raises IntegrityError while anything is locked."""

    def path_of(self, node: TreeNode) -> tuple[list[int], torch.Tensor]:
        """The token ids and KV slots from the root down to `node`."""

    def path_nodes(self, node: TreeNode) -> list[TreeNode]:
        """`node` and its ancestors below the root; raises IntegrityError if `node` is not held."""

    def check_integrity(self) -> None:
        """Raise IntegrityError naming the first broken invariant of the cache's own bookkeeping."""

    def check_locks(self, holders: Iterable[TreeNode]) -> None:
        """Raise IntegrityError unless each node's locks equal the `holders` at or below it."""
