"""Validation at the door: every field of a request is checked against what this engine can ever
hold before anything is allocated for it, so a bad request fails alone with a ValueError naming the
problem instead of failing inside a step that other requests share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from radixlm.protocol import SamplingParams

MAX_N = 64  # samples of one Generate
MAX_STOPS = 64  # stop strings, and separately stop token ids, of one request
MAX_STOP_CHARS = 1024  # length of one stop string
SEED_RANGE = (0, 2**63 - 1 - MAX_N)  # a seed of sample i is seed + i; torch takes 64-bit seeds


@dataclass(frozen=True)
class Limits:
    """What one engine can hold: the model's vocabulary, the context and the KV pool."""

    vocab_size: int
    max_context: int
    pool_capacity: int


def check_n(n: int, stream: bool) -> None:
    """The number of samples one Generate asks for."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"n must be in [1, {MAX_N}], got {n}")
    if n > 1 and stream:
        raise ValueError("streaming supports n = 1 only; send n separate streaming requests")


def check_prompt(ids: Sequence[int], limits: Limits) -> None:
    if not ids:
        raise ValueError("prompt is empty")
    vocab = limits.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise ValueError(f"prompt has token id {bad} outside the vocabulary [0, {vocab})")
    if len(ids) >= limits.max_context:
        raise ValueError(f"prompt is {len(ids)} tokens; the context holds {limits.max_context}")
    if len(ids) + 1 > limits.pool_capacity:
        raise ValueError(f"prompt is {len(ids)} tokens; the KV pool holds {limits.pool_capacity}")


def check_sampling(p: SamplingParams) -> None:
    """Ranges that hold on every engine; raise ValueError naming the first invalid field."""
    if not p.temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {p.temperature}")
    if not 0 < p.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p.top_p}")
    if not isinstance(p.top_k, int):
        raise ValueError(f"top_k must be an int, got {p.top_k!r}")
    if not 0 <= p.min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {p.min_p}")
    if not p.repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {p.repetition_penalty}")
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(p, name)
        if not -2 <= value <= 2:
            raise ValueError(f"{name} must be in [-2, 2], got {value}")
    if p.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {p.max_new_tokens}")
    if not 0 <= p.min_new_tokens <= p.max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {p.min_new_tokens}")
    if not 0 <= p.top_logprobs <= 20:
        raise ValueError(f"top_logprobs must be in [0, 20], got {p.top_logprobs}")
    if p.logprob_start_len < -1:
        raise ValueError(f"logprob_start_len must be >= -1, got {p.logprob_start_len}")
    if any(not s for s in p.stop):
        raise ValueError("stop strings must be non-empty")
    if p.constraint is not None:
        p.constraint.selected()


def check_params(p: SamplingParams, limits: Limits) -> None:
    """Ranges that depend on the engine, and finiteness, on top of `check_sampling`."""
    check_sampling(p)
    for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
        if not math.isfinite(getattr(p, name)):
            raise ValueError(f"{name} must be a finite number, got {getattr(p, name)}")
    longest = min(limits.max_context, limits.pool_capacity)
    if p.max_new_tokens > longest:
        raise ValueError(f"max_new_tokens must be <= {longest} (what the context holds), got {p.max_new_tokens}")
    if p.top_k > limits.vocab_size:
        raise ValueError(f"top_k must be <= the vocabulary size {limits.vocab_size}, got {p.top_k}")
    if p.seed is not None and not SEED_RANGE[0] <= p.seed <= SEED_RANGE[1]:
        raise ValueError(f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {p.seed}")
    if len(p.stop_token_ids) > MAX_STOPS or len(p.stop) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop strings and {MAX_STOPS} stop token ids")
    bad = next((t for t in p.stop_token_ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise ValueError(f"stop_token_ids has token id {bad} outside the vocabulary [0, {limits.vocab_size})")
    long = next((s for s in p.stop if len(s) > MAX_STOP_CHARS), None)
    if long is not None:
        raise ValueError(f"a stop string is {len(long)} characters; at most {MAX_STOP_CHARS}")
