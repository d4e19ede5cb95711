"""Ways to make one request fail inside a step that others share: a model that raises on a poison
token, and a grammar whose mask cannot be computed."""

from __future__ import annotations

import torch

from fake_model import FakeModel


class PoisonError(RuntimeError):
    """What the poisoned model raises."""


class PoisonedModel:
    """Wraps a model (the fake one or SmolLM2): a pass computing token `poison`, in any row of any
    batch, raises; everything else is the wrapped model's."""

    def __init__(self, model: object, poison: int) -> None:
        self._model, self.poison = model, poison

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if bool((ids == self.poison).any()):
            raise PoisonError(f"injected fault: token {self.poison} in the pass")
        return self._model(ids, positions)


class BrokenGrammar:
    """A grammar state whose matcher llguidance cannot use: computing its mask raises."""

    matcher = object()
    n_tokens = 64
    vocab_size = 64
    is_finished = False

    def consume(self, token_id: int) -> None:
        raise AssertionError("never reached: the mask fails first")


class BrokenGrammarBackend:
    """Stands in for the engine's grammar compiler: every constrained request gets a BrokenGrammar."""

    def new_state(self, spec: object) -> BrokenGrammar:
        return BrokenGrammar()


def _computed_by(model: FakeModel, others: list[list[int]], budget: int) -> set[int]:
    return {t for p in others for t in p + model.reference(p, budget)}


def culprit_for_prefill(model: FakeModel, others: list[list[int]], budget: int) -> tuple[list[int], int]:
    """A prompt ending in a token that no other prompt or output computes: poisoning that token makes
    the culprit fail in its prefill pass."""
    seen = _computed_by(model, others, budget)
    poison = next(t for t in range(1, model.cfg.vocab_size) if t not in seen)
    return [30, 31, 32, poison], poison


def culprit_for_decode(model: FakeModel, others: list[list[int]], budget: int) -> tuple[list[int], int]:
    """A prompt whose third generated token is a token that no other prompt or output computes:
    poisoning that token makes the culprit fail in a decode pass shared with the others."""
    seen = _computed_by(model, others, budget)
    for start in range(1, 60):
        prompt = [start, 3, 5, 7]
        out = model.reference(prompt, 3)
        if out[2] not in seen and out[2] not in prompt + out[:2] and out[2] != 0:
            return prompt, out[2]
    raise AssertionError("no suitable culprit prompt")
