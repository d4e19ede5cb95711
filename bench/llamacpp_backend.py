"""llama-cpp-python on the embedded model's own GGUF file (Q4_1), as a local-CPU user runs it: one
`Llama` object, one call at a time. Its only cache is its own: the KV of the previous call's tokens,
reused up to the longest common prefix with the next prompt.

Gen calls are greedy (argmax of the logits after each `Llama.eval`, as `Llama.generate` with top_k=1
but without its sampler chain), and a constrained call masks the logits with the same llguidance
grammar radixlm and the HF peer use (radixlm's GrammarBackend on the same tokenizer, with the engine's
semantics: the grammar's forced tokens follow each sampled token, evaluated in one batch), not llama.cpp's
own GBNF: llama.cpp's llguidance support is a build option (LLAMA_LLGUIDANCE, which needs a Rust
toolchain) that llama-cpp-python's wheels do not enable, and its GBNF from a JSON schema allows other
whitespace than radixlm's grammar, so agents could take different steps. A select evaluates the
prefix once (reusing what the context already holds) and then each choice's tokens on top of it.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from radixlm.engine.model_source import EMBEDDED_MODELS, embedded_gguf
from radixlm.engine.tokenizer import Tokenizer

from .peer_backend import PeerBackend, trim_stop

CONTEXT = 8192


def gguf_path(model: str = "smollm2") -> str:
    """The GGUF file inside the embedded model's wheel (the file radixlm converts at first start)."""
    if model not in EMBEDDED_MODELS:
        raise ValueError(f"llama-cpp-python runs on an embedded model's GGUF; {model!r} is not one")
    return str(embedded_gguf(model))


def _lcp(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaCppBackend(PeerBackend):
    """llama-cpp-python with the same tokenizer ids as the engine (the converted GGUF's tokenizer)."""

    def __init__(self, folder: str, threads: int, model: str = "smollm2") -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=gguf_path(model), n_ctx=CONTEXT, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, logits_all=False, verbose=False)
        super().__init__(Tokenizer(folder), self.llm.n_vocab())
        self.eos = self.llm.token_eos()

    def flush(self) -> None:
        self.llm.reset()

    def _generate(self, ids, max_new_tokens, stop, grammar, t0):
        state = self.grammar_backend().new_state(grammar) if grammar is not None else None
        cached = self.prefill(ids)
        out: list[int] = []
        first, reason, text = None, "length", ""
        while len(out) < max_new_tokens:
            logits = self.logits()
            if state is not None:
                logits = np.where(state.allowed_mask().numpy(), logits, -np.inf)
            token = int(np.argmax(logits))
            if first is None:
                first = time.perf_counter()
            new = [token]
            if token == self.eos:  # kept in the output ids, as radixlm keeps it; `text` is the text before it
                out.append(token)
                reason = "stop"
                break
            if state is not None:  # radixlm's engine semantics: the grammar's forced tokens follow
                state.consume(token)
                if not state.is_finished:
                    forced = state.forced_tokens()[: max_new_tokens - len(out) - 1]
                    state.consume_many(forced)
                    new += forced
            out += new
            text, stopped = trim_stop(self.tok.decode(out), stop)
            if stopped or (state is not None and state.is_finished):
                reason = "stop"
                break
            if len(out) < max_new_tokens:
                self.llm.eval(new)
        return out, text, reason, cached, first or time.perf_counter()

    def prefill(self, ids: list[int]) -> int:
        """Evaluate a prompt, reusing the context's longest common prefix with it; the tokens reused."""
        cached = min(_lcp(self.evaluated(), ids), len(ids) - 1)
        self.llm.n_tokens = cached
        self.llm.eval(ids[cached:])
        return cached

    def evaluated(self) -> np.ndarray:
        """The token ids the context holds (their KV is computed)."""
        return self.llm.input_ids[: self.llm.n_tokens]

    def logits(self) -> np.ndarray:
        """The logits after the last evaluated token (a copy)."""
        from llama_cpp import llama_get_logits

        return np.ctypeslib.as_array(llama_get_logits(self.llm.ctx), shape=(self.vocab_size,)).astype(np.float64)

    def _logprobs(self) -> np.ndarray:
        """Log-softmax of the logits after the last evaluated token."""
        logits = self.logits()
        return logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())

    def _score(self, seqs, starts):
        m = min(starts)
        reuse = min(_lcp(self.evaluated(), seqs[0][:m]), m - 1)
        self.llm.n_tokens = reuse
        self.llm.eval(seqs[0][reuse:m])
        last = self._logprobs()
        scores = []
        for seq, start in zip(seqs, starts):
            self.llm.n_tokens = m
            row, lp = [], last
            for p in range(m, len(seq)):
                if p >= start:
                    row.append(float(lp[seq[p]]))
                if p + 1 < len(seq):
                    self.llm.eval([seq[p]])
                    lp = self._logprobs()
            scores.append(row)
        return scores, [reuse] + [m] * (len(seqs) - 1)



def serve_sequential(prompts: list[list[int]], max_new_tokens: int, threads: int, emit: Callable,
                     model: str = "smollm2") -> None:
    """Child-process entry (see isolation.py) for the single benches: serve token-id prompts one at a
    time, greedy, exactly `max_new_tokens` tokens each (EOS does not stop it, as radixlm's ignore_eos),
    the previous prompt's KV as the only cache. Emits per request: service and first-token seconds,
    tokens reused, output ids."""
    from radixlm.engine.model_source import resolve_model

    backend = LlamaCppBackend(str(resolve_model(model)), threads, model)
    backend.generate("Warm up.", max_new_tokens=4)
    backend.flush()
    for ids in prompts:
        start = time.perf_counter()
        cached = backend.prefill(ids)
        out: list[int] = []
        first = None
        while len(out) < max_new_tokens:
            out.append(int(np.argmax(backend.logits())))
            first = first or time.perf_counter()
            if len(out) < max_new_tokens:
                backend.llm.eval([out[-1]])
        emit({"service_s": time.perf_counter() - start, "first_token_s": first - start, "cached_tokens": cached,
              "output_ids": out})
