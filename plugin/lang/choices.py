"""Select methods: turn each choice's token logprobs into scores and a decision (pure arithmetic).

- token_length_normalized (default): mean logprob of the choice's tokens.
- greedy_token_selection: compare choices token by token: at each position keep the choices with the
  highest logprob there; a choice shorter than that position is padded with its own mean logprob
  (so "A" vs "A very long" is compared fairly); ties go to the earlier choice.
- unconditional_likelihood_normalized: mean conditional logprob minus the mean logprob of the same
  choice after a neutral context (the choice's prior), so choices that are likely anywhere lose
  their advantage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def mean_logprob(xs: Sequence[float]) -> float:
    """The token-length-normalized logprob of a choice (-inf for none)."""
    return sum(xs) / len(xs) if xs else float("-inf")


@dataclass(frozen=True)
class ChoicesMethod:
    name: str
    requires_unconditional: bool = False

    def __call__(self, cond: list[list[float]], uncond: list[list[float]] | None = None) -> tuple[int, list[float]]:
        return decide(self, cond, uncond)


token_length_normalized = ChoicesMethod("token_length_normalized")
greedy_token_selection = ChoicesMethod("greedy_token_selection")
unconditional_likelihood_normalized = ChoicesMethod("unconditional_likelihood_normalized", True)
METHODS = {m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)}


def resolve(method: ChoicesMethod | str | None) -> ChoicesMethod:
    if method is None:
        return token_length_normalized
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown choices_method {method!r}; choose one of {', '.join(METHODS)}")
        return METHODS[method]
    return method


def decide(method: ChoicesMethod, cond: list[list[float]], uncond: list[list[float]] | None = None) -> tuple[int, list[float]]:
    """(index of the chosen choice, one score per choice)."""
    if not cond:
        raise ValueError("no choices to decide between")
    means = [mean_logprob(c) for c in cond]
    if method.name == "token_length_normalized":
        return means.index(max(means)), means
    if method.name == "unconditional_likelihood_normalized":
        if uncond is None or len(uncond) != len(cond):
            raise ValueError("unconditional_likelihood_normalized needs unconditional logprobs for every choice")
        scores = [m - mean_logprob(u) for m, u in zip(means, uncond)]
        return scores.index(max(scores)), scores
    if method.name == "greedy_token_selection":
        width = max(len(c) for c in cond)
        padded = [list(c) + [means[i]] * (width - len(c)) for i, c in enumerate(cond)]
        alive = list(range(len(cond)))
        for pos in range(width):
            best = max(padded[i][pos] for i in alive)
            alive = [i for i in alive if padded[i][pos] == best]
            if len(alive) == 1:
                break
        return alive[0], means
    raise ValueError(f"unknown choices method {method.name!r}")
