"""RadixCache and NoRadixCache: small exact cases and corruption detection (the stateful model check is in
test_radix_cache_model.py)."""

from __future__ import annotations

import pytest
import torch

from radixlm.engine.kv_pool import SlotAllocator
from radixlm.engine.radix_cache import IntegrityError, NoRadixCache, RadixCache


def make(num_slots: int = 64) -> tuple[SlotAllocator, RadixCache]:
    alloc = SlotAllocator(num_slots)
    return alloc, RadixCache(alloc)


def put(cache: RadixCache, ids: list[int]) -> tuple[int, torch.Tensor]:
    """Insert `ids` with fresh slots, freeing the duplicates as the engine does; returns (present, slots)."""
    slots = cache.allocator.alloc(len(ids))
    present = cache.insert(ids, slots)
    cache.allocator.free(slots[:present])
    return present, slots


def conserved(alloc: SlotAllocator, cache: RadixCache) -> bool:
    return alloc.available + cache.total_size == alloc.capacity


def test_empty_match():
    _, cache = make()
    m = cache.match_prefix([1, 2, 3])
    assert (m.length, m.node, m.slots.tolist()) == (0, cache.root, [])
    assert m.slots.dtype == torch.int64
    cache.check_integrity()


def test_insert_then_match_returns_same_slots():
    alloc, cache = make()
    present, slots = put(cache, [1, 2, 3, 4])
    assert present == 0
    m = cache.match_prefix([1, 2, 3, 4, 5])
    assert m.length == 4 and m.slots.tolist() == slots.tolist()
    assert cache.evictable_size == 4 and cache.protected_size == 0
    cache.check_integrity()
    assert conserved(alloc, cache)


def test_match_splits_edge_and_node_path_is_the_match():
    _, cache = make()
    _, slots = put(cache, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2, 9])
    assert m.length == 2 and m.slots.tolist() == slots[:2].tolist()
    assert m.node.key == [1, 2] and m.node.parent is cache.root
    (tail,) = m.node.children.values()
    assert tail.key == [3, 4] and tail.value.tolist() == slots[2:].tolist()
    assert cache.total_size == 4
    cache.check_integrity()


def test_match_ending_exactly_at_node_boundary_does_not_split():
    _, cache = make()
    put(cache, [1, 2])
    put(cache, [1, 2, 3])
    m = cache.match_prefix([1, 2])
    assert m.length == 2 and m.node.key == [1, 2] and len(m.node.children) == 1


def test_insert_returns_already_present_length_and_keeps_tree_slots():
    alloc, cache = make()
    _, first = put(cache, [1, 2, 3, 4])
    present, second = put(cache, [1, 2, 5, 6])
    assert present == 2
    assert cache.match_prefix([1, 2, 5, 6]).slots.tolist() == first[:2].tolist() + second[2:].tolist()
    assert cache.match_prefix([1, 2, 3, 4]).slots.tolist() == first.tolist()
    assert put(cache, [1, 2, 3])[0] == 3  # fully present: every new slot was a duplicate
    assert put(cache, [])[0] == 0
    assert cache.total_size == 6
    cache.check_integrity()
    assert conserved(alloc, cache)


def test_insert_extending_a_leaf_and_sibling_branches():
    _, cache = make()
    put(cache, [1, 2])
    assert put(cache, [1, 2, 3, 4])[0] == 2
    assert put(cache, [2, 2])[0] == 0
    assert sorted(cache.root.children) == [1, 2]
    assert cache.match_prefix([1, 2, 3, 4]).length == 4
    cache.check_integrity()


def test_insert_engine_flow_with_matched_prefix():
    alloc, cache = make()
    put(cache, [1, 2, 3])
    m = cache.match_prefix([1, 2, 3, 4, 5])
    slots = torch.cat([m.slots, alloc.alloc(2)])
    present = cache.insert([1, 2, 3, 4, 5], slots)
    assert present == 3
    alloc.free(slots[m.length : present])  # nothing: the prefix came from the tree
    assert cache.match_prefix([1, 2, 3, 4, 5]).slots.tolist() == slots.tolist()
    cache.check_integrity()
    assert conserved(alloc, cache)


def test_insert_rejects_mismatched_slots():
    alloc, cache = make()
    with pytest.raises(ValueError):
        cache.insert([1, 2, 3], alloc.alloc(2))


def test_tensor_ids_are_accepted():
    _, cache = make()
    _, slots = put(cache, [1, 2, 3])
    assert cache.match_prefix(torch.tensor([1, 2, 7])).slots.tolist() == slots[:2].tolist()


def test_lock_moves_sizes_along_the_path_only():
    _, cache = make()
    put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 5])
    node = cache.match_prefix([1, 2, 3, 4]).node  # path: [1, 2] -> [3, 4]
    cache.lock(node)
    assert (cache.protected_size, cache.evictable_size) == (4, 1)
    cache.lock(node)
    cache.unlock(node)
    assert (cache.protected_size, cache.evictable_size) == (4, 1)
    cache.check_integrity()
    cache.unlock(node)
    assert (cache.protected_size, cache.evictable_size) == (0, 5)
    with pytest.raises(IntegrityError):
        cache.unlock(node)
    assert (cache.protected_size, cache.evictable_size) == (0, 5)
    cache.check_integrity()
    cache.lock(cache.root)  # the root is never counted
    assert cache.protected_size == 0


def test_locked_node_survives_split_of_its_edge():
    _, cache = make()
    put(cache, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).node
    cache.lock(node)
    cache.match_prefix([1, 2, 9])  # splits the locked edge
    cache.check_integrity()
    assert cache.protected_size == 4
    cache.unlock(node)
    assert cache.protected_size == 0
    cache.check_integrity()


def test_evict_lru_order_and_locked_leaves_never():
    alloc, cache = make()
    put(cache, [1, 1])
    put(cache, [2, 2])
    put(cache, [3, 3])
    put(cache, [4, 4])
    cache.match_prefix([1, 1])  # [1, 1] is now the most recent; [2, 2] the oldest
    cache.lock(cache.match_prefix([3, 3]).node)
    assert cache.evict(3) == 4  # whole edges: [2, 2] then [4, 4]
    assert [cache.match_prefix(s).length for s in ([1, 1], [2, 2], [3, 3], [4, 4])] == [2, 0, 2, 0]
    assert cache.evict(100) == 2  # only [1, 1] is left unlocked
    assert cache.match_prefix([3, 3]).length == 2 and cache.evictable_size == 0
    assert cache.evict(1) == 0
    cache.check_integrity()
    assert conserved(alloc, cache)


def test_evict_stops_once_enough_is_freed():
    _, cache = make()
    put(cache, [1, 1, 1])
    put(cache, [2, 2, 2])
    assert cache.evict(1) == 3
    assert cache.total_size == 3
    assert cache.evict(0) == 0


def test_parent_becomes_evictable_after_its_children():
    alloc, cache = make()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])  # [1, 2] -> {[3], [4]}
    put(cache, [9])  # newer than both branches
    assert cache.evict(4) == 4  # [3], [4], then their parent [1, 2], before the newer [9]
    assert cache.match_prefix([9]).length == 1 and cache.match_prefix([1]).length == 0
    cache.check_integrity()
    assert conserved(alloc, cache)


def test_locked_child_keeps_parent_from_eviction():
    _, cache = make()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])
    cache.lock(cache.match_prefix([1, 2, 3]).node)
    assert cache.evict(100) == 1  # only the unlocked [4]
    assert cache.match_prefix([1, 2, 3]).length == 3


def test_evicted_or_reset_node_cannot_be_locked():
    _, cache = make()
    put(cache, [1, 2])
    node = cache.match_prefix([1, 2]).node
    cache.evict(2)
    with pytest.raises(IntegrityError):
        cache.lock(node)
    put(cache, [3])
    node = cache.match_prefix([3]).node
    cache.reset()
    with pytest.raises(IntegrityError):
        cache.lock(node)


def test_slots_in_tree_and_reset():
    alloc, cache = make()
    _, a = put(cache, [1, 2, 3])
    _, b = put(cache, [1, 5])
    assert sorted(cache.slots_in_tree().tolist()) == sorted(a.tolist() + b[1:].tolist())
    node = cache.match_prefix([1, 5]).node
    cache.lock(node)
    with pytest.raises(IntegrityError):
        cache.reset()
    cache.unlock(node)
    cache.reset()
    assert cache.total_size == 0 and alloc.available == alloc.capacity
    assert cache.slots_in_tree().numel() == 0 and cache.match_prefix([1]).length == 0
    cache.check_integrity()


def _corruptions():
    def dup_slot(c, a):
        one, two = c.match_prefix([1, 2, 3]).node, c.match_prefix([5]).node
        two.value = one.value[:1].clone()

    def slot_freed(c, a):
        a.free(c.match_prefix([5]).node.value.clone())

    def slot_zero(c, a):
        c.match_prefix([5]).node.value[0] = 0

    def neg_lock(c, a):
        c.match_prefix([5]).node.lock_ref = -1

    def child_over_parent_lock(c, a):
        c.match_prefix([1, 2, 3]).node.lock_ref = 1  # its parent [1, 2] stays at 0

    def wrong_size(c, a):
        c._evictable_size += 1

    def unlocked_size_swap(c, a):
        c.match_prefix([5]).node.lock_ref = 1  # protected without moving the size

    def short_value(c, a):
        node = c.match_prefix([5]).node
        node.key = [5, 5]

    def empty_key(c, a):
        node = c.match_prefix([5]).node
        node.key, node.value = [], node.value[:0]

    def misfiled_child(c, a):
        node = c.root.children.pop(5)
        c.root.children[7] = node

    def bad_parent(c, a):
        c.match_prefix([1, 2, 3]).node.parent = c.root

    def shared_first_token(c, a):
        c.match_prefix([1, 2, 4]).node.key = [3]  # siblings [3] and [3]; the second filed under 4

    return {
        "duplicated slot": (dup_slot, "more than once"),
        "tree slot on free list": (slot_freed, "free list"),
        "slot 0 in tree": (slot_zero, "scratch slot"),
        "negative lock": (neg_lock, "negative lock_ref"),
        "child locked more than parent": (child_over_parent_lock, "path-counted"),
        "wrong size counter": (wrong_size, "sizes are"),
        "lock without size move": (unlocked_size_swap, "sizes are"),
        "key/value length mismatch": (short_value, "as long as its key"),
        "empty key": (empty_key, "empty key"),
        "child misfiled": (misfiled_child, "filed under token"),
        "wrong parent pointer": (bad_parent, "parent pointer"),
        "siblings share first token": (shared_first_token, "siblings must differ"),
    }


@pytest.mark.parametrize("name", sorted(_corruptions()))
def test_check_integrity_catches_corruption(name):
    corrupt, message = _corruptions()[name]
    alloc, cache = make()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])
    put(cache, [5])
    cache.check_integrity()
    corrupt(cache, alloc)
    with pytest.raises(IntegrityError, match=message):
        cache.check_integrity()


def test_no_radix_cache_semantics():
    alloc = SlotAllocator(16)
    cache = NoRadixCache(alloc)
    slots = alloc.alloc(3)
    present = cache.insert([1, 2, 3], slots)
    assert present == 3  # "all present": the caller's duplicate-freeing frees all of its slots
    alloc.free(slots[:present])
    m = cache.match_prefix([1, 2, 3])
    assert (m.length, m.node, m.slots.numel()) == (0, cache.root, 0)
    cache.lock(m.node)
    cache.unlock(m.node)
    cache.unlock(m.node)
    assert cache.evict(10) == 0
    assert (cache.evictable_size, cache.protected_size, cache.total_size) == (0, 0, 0)
    assert cache.slots_in_tree().numel() == 0
    cache.reset()
    cache.check_integrity()
    assert alloc.available == alloc.capacity
    with pytest.raises(ValueError):
        cache.insert([1, 2], alloc.alloc(1))
