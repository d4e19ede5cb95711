"""ForkGroup: the branches of one `s.fork(n)`."""

from __future__ import annotations

from typing import Any, Iterator

from .state import ProgramState


class ForkGroup:
    """Index, iterate, `+=` to every branch (an expression, a list with one item per branch, or a
    function of the branch index), `forks[i] += ...`, and `join`."""

    def __init__(self, states: list[ProgramState], parent: ProgramState) -> None:
        self.states, self.parent = states, parent

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        """Only the rebinding that `forks[i] += expr` does; a branch cannot be replaced."""
        if value is not self.states[i]:
            raise TypeError("a fork's branch cannot be replaced; append to it with forks[i] += ...")

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def __iadd__(self, other: Any) -> "ForkGroup":
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} items for {len(self.states)} branches")
            items = list(other)
        elif callable(other):
            items = [other(i) for i in range(len(self.states))]
        else:
            items = [other] * len(self.states)
        for s, x in zip(self.states, items):
            s += x
        return self

    def join(self, mode: str = "gather_variable") -> ProgramState:
        self.parent.join(self, mode)
        return self.parent
