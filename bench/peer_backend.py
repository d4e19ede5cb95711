"""The program-language `Backend` for peer systems that run one call at a time (HF transformers,
llama-cpp-python): the shared text/token plumbing; subclasses supply `_generate` and `_score`.

Prompts are tokenized exactly as the radixlm engine tokenizes them (the model's HF tokenizer, no
special tokens added), so every system sees the same token ids. A lock serializes all model calls:
these peers serve one call at a time.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Any, Iterator, Sequence

from radixlm.engine.grammar import GrammarBackend
from radixlm.client import sampling_params
from radixlm.protocol import Constraint, max_new_tokens_of
from radixlm.engine.tokenizer import Tokenizer
from radixlm.lang.backend import ChoiceScore, GenOutput, Usage
from radixlm.lang.chat import CANDIDATES, PROBE, render

from .calls import CallLog


PEER_CONSTRAINTS = ("json_schema", "regex", "lark")  # the constraint kinds the peers' gen calls take


class PeerBackend(ABC):
    """Backend over a sequential peer; records every call in `self.log` (replace it per workload)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.tok = tokenizer
        self.vocab_size = vocab_size
        self.log = CallLog()
        self.lock = threading.Lock()
        self._grammars: GrammarBackend | None = None

    # -- what subclasses implement --------------------------------------------------------------
    @abstractmethod
    def _generate(self, ids: list[int], max_new_tokens: int, stop: list[str], grammar: Constraint | None,
                  t0: float) -> tuple[list[int], str, str, int, float]:
        """Greedy generation after `ids`: (output ids, text with the stop string trimmed, finish reason,
        prompt tokens served from the peer's own cache, perf_counter time of the first token)."""

    @abstractmethod
    def _score(self, seqs: list[list[int]], starts: list[int]) -> tuple[list[list[float]], list[int]]:
        """Logprobs of seqs[i][starts[i]:] given what precedes each token; all seqs share their
        first min(starts) tokens. Returns (logprobs per seq, prompt tokens of each seq that were
        not computed for it: served from the peer's cache or from the shared part of this call)."""

    def flush(self) -> None:
        """Forget any cached state (start a workload cold); peers without a cache have none."""

    # -- Backend interface ----------------------------------------------------------------------
    def grammar_backend(self) -> GrammarBackend:
        if self._grammars is None:
            self._grammars = GrammarBackend(self.tok.hf, self.vocab_size)
        return self._grammars

    def generate(self, prompt: str, **options: Any) -> GenOutput:
        unknown = set(options) - {"max_new_tokens", "stop", "temperature", *PEER_CONSTRAINTS, "trace_id"}
        if unknown or options.get("temperature", 0.0) not in (0.0, None):
            raise ValueError(f"{type(self).__name__} runs greedy gen calls only; got options {sorted(options)}")
        stop = options.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        # the constraint (json_schema, regex, or lark: DSPy's ChatAdapter grammar) as radixlm's client builds it
        constraint = sampling_params({k: options[k] for k in PEER_CONSTRAINTS if options.get(k) is not None}).constraint
        ids = self.tok.encode(prompt)
        t0 = time.perf_counter()
        with self.lock:
            out, text, reason, cached, first = self._generate(ids, max_new_tokens_of(options.get("max_new_tokens")), stop,
                                                              constraint, t0)
        self.log.add("gen", ids, out, cached, first - t0)
        matched = next((s for s in stop if reason == "stop" and s), None)
        return GenOutput(text, reason, Usage(len(ids), cached, len(out)), matched)

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        yield self.generate(prompt, **options).text

    def cache_prefix(self, prompt: str) -> Usage:
        """A prefix hint: these peers have no cache to fill ahead, so nothing is computed."""
        return Usage(len(self.tok.encode(prompt)), 0, 0, kind="prefix")

    def score_choices(self, prefix: str, choices: list[str]) -> list[ChoiceScore]:
        """Token healing as in radixlm's EngineBackend: `prefix + choice` is tokenized as one text;
        when its token at the prefix's last position differs, that merged token belongs to the choice."""
        head = self.tok.encode(prefix)
        seqs = [self.tok.encode(prefix + c) for c in choices]
        n = len(head)
        starts = [n if s[:n] == head else n - 1 for s in seqs]
        t0 = time.perf_counter()
        with self.lock:
            logprobs, reused = self._score(seqs, starts)
        elapsed = time.perf_counter() - t0
        out = []
        for seq, start, lps, cached in zip(seqs, starts, logprobs, reused):
            self.log.add("select", seq, [], cached, elapsed)
            out.append(ChoiceScore(lps, seq[start:], Usage(len(seq), cached, 0, kind="select"), start < n))
        return out

    def chat_template_parts(self) -> dict[str, tuple[str, str]] | None:
        """The candidate role markers whose rendering equals the model's own chat template."""
        target = self.tok.apply_chat_template(PROBE)
        return next((parts for parts in CANDIDATES.values() if render(parts, PROBE) == target), None)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """Chat messages rendered with the model's template (what the engine does for messages)."""
        return self.tok.apply_chat_template(list(messages))


def trim_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` cut at the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)
