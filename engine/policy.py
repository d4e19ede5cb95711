"""Waiting-queue orderings: which waiting request to admit first.

- `fcfs`: arrival order.
- `lpm`: longest cached prefix first, so requests that reuse the tree run while it still holds them.
- `dfs-weight`: walk the tree depth first, heaviest subtree (most waiting requests under it) first,
  so requests sharing a prefix are admitted together.
"""

from __future__ import annotations

from typing import Sequence

from .kv_manager import PrefixCache
from .radix_cache import TreeNode
from .request import Request

POLICIES = ("lpm", "dfs-weight", "fcfs")
# Matching every waiting prompt each round costs time; past this queue length, fall back to fcfs.
MAX_QUEUE_FOR_MATCHING = 256


def order_waiting(waiting: Sequence[Request], policy: str, cache: PrefixCache) -> list[Request]:
    """Return the waiting requests in admission order for `policy`."""
    if policy not in POLICIES:
        raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "fcfs" or len(waiting) > MAX_QUEUE_FOR_MATCHING:
        return list(waiting)
    matches = {id(r): cache.match_prefix(r.fill_ids[: r.fill_len - 1]) for r in waiting}
    if policy == "lpm":
        return sorted(waiting, key=lambda r: -matches[id(r)].length)
    return _dfs_weight_order(waiting, {id(r): matches[id(r)].node for r in waiting})


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
