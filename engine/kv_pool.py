"""The paged KV pool: token-granular K/V buffers, their slot allocator, and the request-to-token map.

Page size is one token. Slot 0 is reserved as a scratch slot: padded batch entries write there, so it
is never handed out. Every other slot is owned by exactly one of: the free list, a running request,
or one radix-tree node.
"""

from __future__ import annotations

import torch


class OutOfSlotsError(RuntimeError):
    """Raised when an allocation asks for more slots than are free."""


class SlotAllocator:
    """Free list of KV slot indices (1 .. num_slots-1; slot 0 is the scratch slot)."""

    def __init__(self, num_slots: int) -> None:
        if num_slots < 2:
            raise ValueError(f"num_slots must be >= 2, got {num_slots}")
        self.num_slots = num_slots
        self._free = torch.arange(1, num_slots, dtype=torch.int64)
        self._num_free = num_slots - 1

    @property
    def available(self) -> int:
        """Number of free slots."""
        return self._num_free

    @property
    def capacity(self) -> int:
        """Number of allocatable slots (all but the scratch slot)."""
        return self.num_slots - 1

    def alloc(self, n: int) -> torch.Tensor:
        """Take `n` free slots; raises OutOfSlotsError when fewer are free."""
        if n > self._num_free:
            raise OutOfSlotsError(f"asked for {n} KV slots, {self._num_free} free")
        out = self._free[self._num_free - n : self._num_free].clone()
        self._num_free -= n
        return out

    def free(self, slots: torch.Tensor) -> None:
        """Return slots to the free list."""
        n = slots.numel()
        if n == 0:
            return
        end = self._num_free + n
        if end > self._free.numel():
            raise RuntimeError("freed more KV slots than were allocated")
        self._free[self._num_free : end] = slots
        self._num_free = end

    def free_slots(self) -> torch.Tensor:
        """A copy of the free slot indices (for integrity checks)."""
        return self._free[: self._num_free].clone()


class KVPool:
    """Per-layer K and V buffers of shape [num_slots, kv_heads, head_dim], plus the slot allocator.
    `k[layer]` / `v[layer]` are views of one [num_layers, num_slots, kv_heads, head_dim] tensor each
    (`k_layers` / `v_layers`), so a pass over consecutive layers can take them as one argument."""

    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.allocator = SlotAllocator(num_slots)
        shape = (num_slots, kv_heads, head_dim)
        self.k_layers = torch.zeros((num_layers, *shape), dtype=dtype, device=device)
        self.v_layers = torch.zeros((num_layers, *shape), dtype=dtype, device=device)
        self.k, self.v = list(self.k_layers.unbind(0)), list(self.v_layers.unbind(0))

    @property
    def num_slots(self) -> int:
        return self.allocator.num_slots

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens' K/V ([n, kv_heads, head_dim], any float dtype: converted to the pool's) at `slots` ([n])."""
        self.k[layer][slots] = k.to(self.k[layer].dtype)
        self.v[layer][slots] = v.to(self.v[layer].dtype)

    def bytes_per_token(self) -> int:
        """KV bytes one token takes across all layers."""
        k = self.k[0]
        return 2 * len(self.k) * k.shape[1] * k.shape[2] * k.element_size()


class ReqToTokenPool:
    """`req_to_token[req_slot, pos] -> kv slot` for up to `max_requests` live requests."""

    def __init__(self, max_requests: int, max_context: int, device: torch.device | str = "cpu") -> None:
        self.table = torch.zeros((max_requests, max_context), dtype=torch.int64, device=device)
        self._free = list(range(max_requests - 1, -1, -1))
        self.max_context = max_context

    @property
    def available(self) -> int:
        return len(self._free)

    def alloc(self) -> int:
        """Take a request row; raises OutOfSlotsError when all are in use."""
        if not self._free:
            raise OutOfSlotsError("no free request rows")
        return self._free.pop()

    def free(self, row: int) -> None:
        self._free.append(row)
