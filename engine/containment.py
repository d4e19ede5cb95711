"""Finding the request a shared piece of work fails on, so that it fails alone.

A forward pass or a sampling call covers many requests. When one raises, the engine re-runs the work
for each request alone (`culprits`), fails only those whose solo run raises, and repeats the work for
the rest. Re-running must not change the rest's outputs: KV writes are idempotent (same tokens, same
slots), and seeded generators are rewound to where they were (`GeneratorSnapshot`).
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
