"""Short extends of a batch, attended together instead of one call each (the torch backend).

An extend batch often holds many sequences with a few new tokens each: the questions of a
`run_batch` over a cached few-shot prefix, the choices of `select`s, agents' next turns. One
attention call per sequence and layer costs more than the attention itself there, so sequences with
at most `SHORT_EXTEND_MAX` new tokens are grouped by their count rounded up (`group_width`: padding
adds at most 7 queries to a row), then by the cached prefix they share (the few-shot
examples of one subject, one agent's trajectory): each group is one padded call, and one that can
read the shared prefix's K/V once for all its sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.context import shared_prefix_len

SHORT_EXTEND_MAX = 64
# Below this many leading slots shared by every row, reading them once for all rows (the split)
# saves less than it costs: such sequences get no group of their own, and rows gather their slots.
CASCADE_MIN_SHARED = 32


@dataclass
class ExtendGroup:
    """Sequences attended in one padded call. Row b holds sequence b's new tokens, padded to `width`
    queries by repeating its last one; query j of row b attends to the first `prefix + j + 1` slots
    of `kv_index[b]` (`mask`, [B, 1, width, L]). `kept` are the flattened [B * width] positions of
    real tokens and `kept_rows` their rows in the flat batch. The first `shared_len` slots are the
    same in every row and seen by every query."""

    rows: torch.Tensor
    kept: torch.Tensor
    kept_rows: torch.Tensor
    kv_index: torch.Tensor
    mask: torch.Tensor
    shared_len: int


def group_width(n: int) -> int:
    """The padded query count of a sequence of n new tokens: 1, 2, 4, 8, then multiples of 8."""
    return 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


def group_short_extends(seq_slots: list[torch.Tensor], prefix_lens: list[int],
                        extend_lens: list[int]) -> list[ExtendGroup]:
    """The groups of the batch's sequences with at most SHORT_EXTEND_MAX new tokens (longer ones
    are not in any group)."""
    starts = [0]
    for n in extend_lens[:-1]:
        starts.append(starts[-1] + n)
    by_width: dict[int, list[int]] = {}
    for i, n in enumerate(extend_lens):
        if n <= SHORT_EXTEND_MAX:
            by_width.setdefault(group_width(n), []).append(i)
    groups = []
    for width, members in sorted(by_width.items()):
        for cluster in _prefix_clusters(members, seq_slots, prefix_lens):
            groups.append(_group(width, cluster, starts, seq_slots, prefix_lens, extend_lens))
    return groups


def _prefix_clusters(members: list[int], seq_slots: list[torch.Tensor], prefix_lens: list[int]) -> list[list[int]]:
    """`members` split by their first CASCADE_MIN_SHARED cached slots (sequences that share them
    share a radix-tree path, so perhaps much more); sequences that share them with no other member
    form one last cluster together."""
    alone = [i for i in members if prefix_lens[i] < CASCADE_MIN_SHARED]
    keyed = [i for i in members if prefix_lens[i] >= CASCADE_MIN_SHARED]
    by_start: dict[int, list[int]] = {}
    if keyed:
        starts = torch.stack([seq_slots[i][:CASCADE_MIN_SHARED] for i in keyed])
        for i, key in zip(keyed, torch.unique(starts, dim=0, return_inverse=True)[1].tolist()):
            by_start.setdefault(key, []).append(i)
    clusters = [c for c in by_start.values() if len(c) > 1]
    alone += [c[0] for c in by_start.values() if len(c) == 1]
    return clusters + ([sorted(alone)] if alone else [])


def _group(width: int, members: list[int], starts: list[int], seq_slots: list[torch.Tensor],
           prefix_lens: list[int], extend_lens: list[int]) -> ExtendGroup:
    device = seq_slots[members[0]].device
    lens = torch.tensor([extend_lens[i] for i in members])
    prefixes = torch.tensor([prefix_lens[i] for i in members])
    last = torch.minimum(torch.arange(width)[None, :], lens[:, None] - 1)  # [B, width]
    rows = torch.tensor([starts[i] for i in members])[:, None] + last
    kv_len = max(len(seq_slots[i]) for i in members)
    kv_index = torch.zeros(len(members), kv_len, dtype=torch.long, device=device)
    for b, i in enumerate(members):
        kv_index[b, : len(seq_slots[i])] = seq_slots[i]
    mask = torch.arange(kv_len)[None, None, :] <= (prefixes[:, None] + last)[:, :, None]
    kept = (torch.arange(width)[None, :] < lens[:, None]).flatten().nonzero().squeeze(1)
    return ExtendGroup(rows.to(device), kept.to(device), rows.flatten()[kept].to(device), kv_index,
                       mask[:, None].to(device), shared_prefix_len(kv_index, int(prefixes.min())))
