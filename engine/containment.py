"""Finding the request a shared piece of work fails on, so that it fails alone.

A forward pass or a sampling call covers many requests. When one raises, the engine re-runs the work
for each request alone (`culprits`), fails only those whose solo run raises, and repeats the work for
the rest. Re-running must not change the rest's outputs: KV writes are idempotent (same tokens, same
slots), and seeded generators are rewound to where they were (`GeneratorSnapshot`).

A failure that no request can be blamed for (an engine bug) fails every request and `recover`
rebuilds the KV bookkeeping, so that the engine serves on with nothing leaked.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

import torch

from .kv_pool import ReqToTokenPool, SlotAllocator
from .request import FinishReason, GenerationResult, Request, ReqStatus, describe
from .sampler import SampleOutput
from .scheduler import Batch

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("radixlm.engine")

T = TypeVar("T")


def culprits(items: Sequence[T], attempt: Callable[[T], object]) -> list[tuple[T, Exception]]:
    """The items whose `attempt(item)` raises, with what it raised."""
    found = []
    for item in items:
        try:
            attempt(item)
        except Exception as exc:  # noqa: BLE001 - any failure of a solo run marks its request
            found.append((item, exc))
    return found


class GeneratorSnapshot:
    """The states of some per-request generators, to rewind them after a failed or probing call."""

    def __init__(self, generators: Sequence[torch.Generator | None]) -> None:
        self._saved = [(g, g.get_state()) for g in generators if g is not None]

    def restore(self) -> None:
        for generator, state in self._saved:
            generator.set_state(state)


def _fail(engine: Engine, batch: Batch, req: Request, message: str, failed: list[Request]) -> None:
    log.warning("request %s failed alone: %s", req.rid, message)
    was_ghost = req in batch.ghosts  # finished already: its result was reported
    engine.scheduler.fail(req, message, batch.pending(req))
    if not was_ghost:
        failed.append(req)


def forward_isolating(engine: Engine, batch: Batch, failed: list[Request]) -> tuple[Batch, tuple] | None:
    """Run the pass; if it raises, fail only the requests whose solo pass raises and run the rest
    (None when nothing is left)."""
    try:
        return batch, engine._forward(batch)
    except Exception as exc:  # noqa: BLE001 - attributed to requests below
        first = exc
    members = batch.reqs + batch.ghosts
    bad = culprits(members, lambda r: engine._forward(batch.only(r))) if len(members) > 1 else [(members[0], first)]
    if not bad:  # fails only as a whole: nothing to attribute it to
        bad = [(r, first) for r in members]
    for req, exc in bad:
        _fail(engine, batch, req, f"the forward pass failed on this request: {describe(exc)}", failed)
    rest = batch.without([r for r, _ in bad])
    if not rest.reqs and not rest.ghosts:
        return None
    try:
        return rest, engine._forward(rest)
    except Exception as exc:  # noqa: BLE001 - the rest fails as a group, the engine goes on
        for req in rest.reqs + rest.ghosts:
            _fail(engine, rest, req, f"the forward pass failed: {describe(exc)}", failed)
        return None


def sample_isolating(engine: Engine, batch: Batch, logits: torch.Tensor, failed: list[Request]) -> tuple[Batch, SampleOutput]:
    """Sample `batch.sampling` (row i of `logits` is request i); if it raises, fail only the
    requests whose solo sampling (grammar mask included) raises and sample the rest."""
    reqs = batch.sampling
    snapshot = GeneratorSnapshot([r.generator for r in reqs])
    try:
        return batch, engine._sample(reqs, logits)
    except Exception as exc:  # noqa: BLE001 - attributed to requests below
        first = exc

    def alone(i: int) -> None:
        snapshot.restore()
        engine._sample([reqs[i]], logits[i : i + 1])

    bad = culprits(range(len(reqs)), alone) if len(reqs) > 1 else [(0, first)]
    bad = bad or [(i, first) for i in range(len(reqs))]
    for i, exc in bad:
        _fail(engine, batch, reqs[i], f"sampling failed on this request (grammar mask or sampler): {describe(exc)}", failed)
    batch = batch.without([reqs[i] for i, _ in bad])
    keep = [i for i, r in enumerate(reqs) if r in batch.sampling]
    snapshot.restore()
    return batch, engine._sample(batch.sampling, logits[keep])


def recover(engine: Engine, message: str) -> list[GenerationResult]:
    """Fail every request with `message` and rebuild the KV bookkeeping (free list, rows, an empty
    cache) so that nothing a broken step left behind stays leaked; the model and buffers stay."""
    s, batch = engine.scheduler, engine.in_flight
    reqs = list(s.waiting) + s.running + ([s.chunked] if s.chunked else [])
    reqs += [r for r in (batch.reqs if batch else []) if r not in reqs]
    pool, table = engine.kv.pool, engine.kv.table
    pool.allocator = SlotAllocator(pool.num_slots)
    rows = ReqToTokenPool(table.shape[0], table.shape[1], device=table.device)
    engine.build_bookkeeping(pool, rows)
    failed = [r for r in reqs if r.status is not ReqStatus.FINISHED]
    for req in reqs + s.finishing:
        req.row, req.prefix_node, req.prefix_len, req.kv_len = None, None, 0, 0
    for req in failed:
        req.status, req.finish_reason, req.error = ReqStatus.FINISHED, FinishReason.ERROR, message
    return [engine._result(r) for r in failed]
