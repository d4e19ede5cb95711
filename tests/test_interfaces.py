"""The engine's named parts implement their interfaces: both prefix caches are `PrefixCache`s and
every attention backend is an `AttentionBackend`, by member and by each method's parameters."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

from radixlm.engine.attention.backend import AttentionBackend
from radixlm.engine.attention.torch_backend import TorchAttention
from radixlm.engine.kv_pool import SlotAllocator
from radixlm.engine.prefix_cache import PrefixCache
from radixlm.engine.radix_cache import NoRadixCache, RadixCache


def protocol_members(proto: type) -> dict[str, object]:
    """The attributes and methods a protocol declares (its own, not Protocol's or object's)."""
    members = {name: None for name in proto.__annotations__}
    for name, value in vars(proto).items():
        if name == "__call__" or not name.startswith("_"):
            members[name] = value
    return members


def mismatches(proto: type, obj: object) -> list[str]:
    """What `obj` lacks of `proto`, or where its methods take other parameters than the protocol's."""
    found = []
    for name, declared in protocol_members(proto).items():
        if not hasattr(obj, name):
            found.append(f"missing {name}")
            continue
        if inspect.isfunction(declared):
            want = list(inspect.signature(declared).parameters)[1:]
            have = list(inspect.signature(getattr(obj, name)).parameters)
            if want != have:
                found.append(f"{name}{tuple(have)} is not {name}{tuple(want)}")
        elif isinstance(declared, property) and not isinstance(inspect.getattr_static(type(obj), name), property):
            found.append(f"{name} is not a property")
    return found


@pytest.mark.parametrize("cache_class", [RadixCache, NoRadixCache])
def test_both_prefix_caches_are_prefix_caches(cache_class):
    cache = cache_class(SlotAllocator(8))
    assert isinstance(cache, PrefixCache)
    assert mismatches(PrefixCache, cache) == []


def test_the_no_op_cache_shares_nothing_and_the_radix_cache_does():
    assert RadixCache(SlotAllocator(8)).shares_prefixes and not NoRadixCache(SlotAllocator(8)).shares_prefixes


def attention_backends() -> list[object]:
    backends: list[object] = [TorchAttention()]
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        from radixlm.engine.attention.triton_backend import TritonAttention

        backends.append(TritonAttention())
    return backends


@pytest.mark.parametrize("backend", attention_backends(), ids=lambda b: type(b).__name__)
def test_every_attention_backend_is_an_attention_backend(backend):
    assert isinstance(backend, AttentionBackend)
    assert mismatches(AttentionBackend, backend) == []


class _Partial:
    """A cache that forgot two members and renamed a parameter: the check must say so."""

    def __init__(self) -> None:
        self.allocator, self.root, self.lock_epoch, self.shares_prefixes = None, None, 0, True

    def match_prefix(self, tokens):  # named `ids` in the protocol
        """Never called: only its parameters are looked at."""


def test_the_structural_check_catches_a_missing_member_and_a_renamed_parameter():
    found = mismatches(PrefixCache, _Partial())
    assert "missing insert" in found and "missing evictable_size" in found
    assert "match_prefix('tokens',) is not match_prefix('ids',)" in found
    assert not isinstance(_Partial(), PrefixCache)


def test_protocols_declare_members():
    assert {"root", "lock_epoch", "evictable_size", "match_prefix", "path_nodes"} <= set(protocol_members(PrefixCache))
    assert set(protocol_members(AttentionBackend)) == {"name", "__call__"}
