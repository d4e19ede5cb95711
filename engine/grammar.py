"""Constrained decoding with llguidance: grammar specs, per-model compilation and per-request token masks.

A `GrammarBackend` (one per model) wraps the llguidance tokenizer adapter and caches compiled grammars;
`GrammarBackend.new_state` gives each request a `GrammarState`, whose matcher says which tokens may come
next, which tokens the grammar forces (jump-forward) and when generation must end. `fill_allowed` builds
the masks of a whole batch at once. Masks are computed by llguidance as int32 bitmasks and unpacked
with plain torch ops (no torch.compile).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch

KINDS = ("regex", "json_schema", "choices", "lark")
# Compact-but-readable JSON (as json.dumps writes it) with no free whitespace, so a small model cannot
# wander off into endless newlines; a schema can override these through its "x-guidance" key.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_SHIFTS = torch.arange(32, dtype=torch.int32)


class GrammarError(ValueError):
    """A grammar that cannot be compiled, or a token the grammar does not allow."""


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must match.

    `value` is the regex text, the JSON schema as a JSON string, the choices as a JSON list of strings,
    or the Lark grammar text, according to `kind`."""

    kind: str
    value: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GrammarError(f"unknown grammar kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(self.value, str):
            raise GrammarError(f"grammar value must be a string, got {type(self.value).__name__}")

    @classmethod
    def regex(cls, pattern: str) -> GrammarSpec:
        return cls("regex", pattern)

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> GrammarSpec:
        """From a schema object or its JSON text (key order is kept: it is the order of the output)."""
        return cls("json_schema", schema if isinstance(schema, str) else json.dumps(schema))

    @classmethod
    def choices(cls, options: Sequence[str]) -> GrammarSpec:
        return cls("choices", json.dumps(list(options), ensure_ascii=False))

    @classmethod
    def lark(cls, grammar: str) -> GrammarSpec:
        return cls("lark", grammar)


@dataclass(frozen=True, eq=False)
class CompiledGrammar:
    """A validated grammar: a matcher in its start state, copied for each new request."""

    spec: GrammarSpec
    template: llguidance.LLMatcher


def _llguidance_grammar(spec: GrammarSpec) -> tuple[str, str]:
    """The llguidance grammar for `spec` and the prefix that error messages start with."""
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.value), f"invalid regex {spec.value!r}"
    if spec.kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(spec.value), "invalid Lark grammar"
    if spec.kind == "json_schema":
        try:
            schema = json.loads(spec.value)
        except ValueError as e:
            raise GrammarError(f"invalid JSON schema: not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise GrammarError(f"invalid JSON schema: expected a JSON object, got {spec.value!r}")
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS), "invalid JSON schema"
    try:
        options = json.loads(spec.value)
    except ValueError as e:
        raise GrammarError(f"invalid choices: not a JSON list: {e}") from None
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise GrammarError(f"invalid choices: expected a non-empty JSON list of strings, got {spec.value!r}")
    # Lark string literals take JSON string escapes, so every choice matches literally.
    lark = "start: " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options)
    return llguidance.LLMatcher.grammar_from_lark(lark), "invalid choices"


class GrammarBackend:
    """One per model: the llguidance tokenizer adapter (built once) + a cache of compiled grammars."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, cache_size: int = 256) -> None:
        # The adapter takes the EOS id from the HF tokenizer; llguidance allows it whenever the grammar accepts.
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer)
        self.vocab_size = vocab_size
        self._compile = functools.lru_cache(maxsize=cache_size)(self._compile_uncached)

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        """Validate and compile `spec` (cached); raise GrammarError naming the problem."""
        return self._compile(spec)

    def _compile_uncached(self, spec: GrammarSpec) -> CompiledGrammar:
        grammar, what = _llguidance_grammar(spec)
        matcher = llguidance.LLMatcher(self.tokenizer, grammar)
        if matcher.is_error():
            raise GrammarError(f"{what}: {matcher.get_error().strip()}")
        return CompiledGrammar(spec, matcher)

    def new_state(self, spec: GrammarSpec) -> GrammarState:
        """A fresh matcher for one request."""
        return GrammarState(self.compile(spec).template.deep_copy(), self.tokenizer.vocab_size, self.vocab_size)


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
