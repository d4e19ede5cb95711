"""Constrained decoding with llguidance: per-model compilation and per-request token masks.

A `GrammarBackend` (one per model) wraps the llguidance tokenizer adapter and caches compiled grammars;
`GrammarBackend.new_state` gives each request a `GrammarState`, whose matcher says which tokens may come
next, which tokens the grammar forces (jump-forward) and when generation must end. `fill_allowed` builds
the masks of a whole batch at once. Masks are computed by llguidance as int32 bitmasks and unpacked
with plain torch ops (no torch.compile).
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch

from radixlm.protocol import Constraint

# Compact-but-readable JSON (as json.dumps writes it) with no free whitespace, so a small model cannot
# wander off into endless newlines; a schema can override these through its "x-guidance" key.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_SHIFTS = torch.arange(32, dtype=torch.int32)


class GrammarError(ValueError):
    """A grammar that cannot be compiled, or a token the grammar does not allow."""


@dataclass(frozen=True, eq=False)
class CompiledGrammar:
    """A validated grammar: a matcher in its start state, copied for each new request."""

    constraint: Constraint
    template: llguidance.LLMatcher


def _check(kind: str, value: Any) -> None:
    """Raise GrammarError unless `value` has the type its kind of constraint takes."""
    if kind == "json_schema" and not isinstance(value, dict):
        raise GrammarError(f"invalid JSON schema: expected a JSON object, got {value!r}")
    if kind == "choices" and (not isinstance(value, list) or not value or not all(isinstance(o, str) for o in value)):
        raise GrammarError(f"invalid choices: expected a non-empty list of strings, got {value!r}")
    if kind in ("regex", "lark") and not isinstance(value, str):
        raise GrammarError(f"{kind} must be a string, got {type(value).__name__}")


def _llguidance_grammar(kind: str, value: Any) -> tuple[str, str]:
    """The llguidance grammar for one (checked) constraint and the prefix that error messages start with."""
    if kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(value, defaults=JSON_OPTIONS), "invalid JSON schema"
    if kind == "choices":
        # Lark string literals take JSON string escapes, so every choice matches literally.
        lark = "start: " + " | ".join(json.dumps(o, ensure_ascii=False) for o in value)
        return llguidance.LLMatcher.grammar_from_lark(lark), "invalid choices"
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(value), f"invalid regex {value!r}"
    return llguidance.LLMatcher.grammar_from_lark(value), "invalid Lark grammar"


class GrammarBackend:
    """One per model: the llguidance tokenizer adapter (built once) + a cache of compiled grammars."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, cache_size: int = 256) -> None:
        # The adapter takes the EOS id from the HF tokenizer; llguidance allows it whenever the grammar accepts.
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer)
        self.vocab_size = vocab_size
        self.cache_size = cache_size
        self._compiled: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        """Validate and compile `constraint` (cached, the least recently used dropped first); raise
        GrammarError naming the problem."""
        try:
            kind, value = constraint.selected()
        except ValueError as e:
            raise GrammarError(str(e)) from None
        _check(kind, value)
        # A schema's key order is part of its identity: it is the order of the output.
        key = (kind, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        compiled = self._compiled.get(key)
        if compiled is None:
            grammar, what = _llguidance_grammar(kind, value)
            matcher = llguidance.LLMatcher(self.tokenizer, grammar)
            if matcher.is_error():
                raise GrammarError(f"{what}: {matcher.get_error().strip()}")
            compiled = self._compiled[key] = CompiledGrammar(constraint, matcher)
            if len(self._compiled) > self.cache_size:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return compiled

    def new_state(self, constraint: Constraint) -> GrammarState:
        """A fresh matcher for one request."""
        return GrammarState(self.compile(constraint).template.deep_copy(), self.tokenizer.vocab_size, self.vocab_size)


class GrammarState:
    """One request's matcher."""

    def __init__(self, matcher: llguidance.LLMatcher, n_tokens: int, vocab_size: int) -> None:
        self.matcher = matcher
        self.n_tokens = n_tokens  # the tokenizer's vocabulary: the width llguidance masks
        self.vocab_size = vocab_size  # the model's logits width

    def allowed_mask(self) -> torch.Tensor:
        """Bool [vocab_size]: the tokens allowed next (only EOS once the grammar is finished)."""
        mask = fill_allowed([self], self.vocab_size)
        assert mask is not None
        return mask[0]

    def consume(self, token_id: int) -> None:
        """Advance by one token; raise GrammarError (leaving the state as it was) if it is not allowed."""
        self.consume_many([token_id])

    def consume_many(self, ids: Sequence[int]) -> None:
        """Advance by several tokens (e.g. forced ones); all or nothing: raise GrammarError on a disallowed one."""
        done = self.matcher.try_consume_tokens(list(ids))
        if done != len(ids):
            self.matcher.rollback(done)
            error = self.matcher.get_error()
            raise GrammarError(
                f"token {ids[done]} at position {done} is not allowed by the grammar" + (f": {error}" if error else "")
            )

    def forced_tokens(self) -> list[int]:
        """The tokens the grammar forces next (jump-forward), not yet consumed; empty if none."""
        return self.matcher.compute_ff_tokens()

    @property
    def is_finished(self) -> bool:
        """True when no more tokens may be generated (complete, or stopped by an error): generation must end."""
        return self.matcher.is_stopped()


@functools.cache
def _executor() -> llguidance.LLExecutor:
    return llguidance.LLExecutor()


def fill_allowed(states: Sequence[GrammarState | None], vocab_size: int) -> torch.Tensor | None:
    """Bool [len(states), vocab_size] of allowed next tokens, all True for rows without a state;
    None when no row has one. One bitmask for the batch, filled by llguidance in parallel, unpacked once."""
    rows = [(s.matcher, i) for i, s in enumerate(states) if s is not None]
    if not rows:
        return None
    n_tokens = next(s for s in states if s is not None).n_tokens
    bitmask = torch.full((len(states), (n_tokens + 31) // 32), -1, dtype=torch.int32)
    _executor().unsafe_compute_mask_ptr(rows, bitmask.data_ptr(), bitmask.shape[1] * 4, len(states))
    bits = ((bitmask.unsqueeze(-1) >> _SHIFTS) & 1).view(len(states), -1)  # bit k of word w is token 32w+k
    width = min(n_tokens, vocab_size)
    mask = torch.zeros((len(states), vocab_size), dtype=torch.bool)
    mask[:, :width] = bits[:, :width]
    free = [i for i, s in enumerate(states) if s is None]
    if free:
        mask[free] = True
    return mask
