"""HF transformers as a user of HuggingFacePipeline gets it: one call at a time, a greedy
`model.generate` per gen call with no KV kept between calls; a select scores its choices by HF
logprobs (the prefix once, then the choices as one batch on a copy of its KV). JSON-schema gen calls
are constrained by the same llguidance grammar radixlm uses, applied as a logits processor.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from radixlm.protocol import Constraint
from radixlm.engine.tokenizer import Tokenizer

from .common import FirstTokenTimer, load_hf_model
from .peer_backend import PeerBackend, trim_stop


class _Grammar(LogitsProcessor):
    """Masks the logits to the tokens an llguidance grammar allows (batch 1), with radixlm's engine
    semantics: after each sampled token, the tokens the grammar forces (jump-forward) follow, here
    one generate step each; once the grammar is finished only EOS is allowed (radixlm stops there)."""

    def __init__(self, state: Any, prompt_len: int) -> None:
        self.state, self.prompt_len = state, prompt_len
        self.forced: list[int] = []
        self.consumed = 0  # output tokens the grammar state has seen

    def _consume(self, token: int) -> None:
        self.state.consume(token)
        self.consumed += 1
        if self.forced:
            self.forced.pop(0)
        elif not self.state.is_finished:
            self.forced = self.state.forced_tokens()

    def catch_up(self, out_ids: list[int]) -> None:
        """Consume the last generated token, which no further step showed the processor."""
        if len(out_ids) > self.consumed and not self.state.is_finished:
            self._consume(out_ids[-1])

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_len:
            self._consume(int(input_ids[0, -1]))
        if self.forced and not self.state.is_finished:
            mask = torch.zeros(scores.shape[1], dtype=torch.bool)
            mask[self.forced[0]] = True
        else:
            mask = self.state.allowed_mask()[: scores.shape[1]]
        return scores.masked_fill(~mask.unsqueeze(0), float("-inf"))


class HFBackend(PeerBackend):
    """HF transformers float32 on the model folder the engine loads (the converted GGUF)."""

    def __init__(self, folder: str) -> None:
        self.model = load_hf_model(folder)
        super().__init__(Tokenizer(folder), self.model.config.vocab_size)
        self.eos = self.tok.hf.eos_token_id

    def _generate(self, ids, max_new_tokens, stop, grammar: Constraint | None, t0):
        first = FirstTokenTimer()
        processors = [first]
        constraint = _Grammar(self.grammar_backend().new_state(grammar), len(ids)) if grammar is not None else None
        if constraint is not None:
            processors.append(constraint)
        inp = torch.tensor([ids])
        extra = {"stop_strings": stop, "tokenizer": self.tok.hf} if stop else {}
        with torch.inference_mode():
            out = self.model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self.eos,
                                      logits_processor=LogitsProcessorList(processors), **extra)
        out_ids = out[0, len(ids):].tolist()
        if constraint is not None:
            constraint.catch_up(out_ids)
        finished = constraint is not None and constraint.state.is_finished
        if finished and out_ids and out_ids[-1] == self.eos:
            out_ids.pop()  # radixlm ends a finished grammar without an EOS token
        text, stopped = trim_stop(self.tok.decode(out_ids), stop)
        reason = "stop" if stopped or finished or (out_ids and out_ids[-1] == self.eos) else "length"
        return out_ids, text, reason, 0, first.time or time.perf_counter()

    def _score(self, seqs, starts):
        m = min(starts)
        with torch.inference_mode():
            out = self.model(torch.tensor([seqs[0][:m]]), use_cache=True)
            last = out.logits[0, -1].float().log_softmax(-1)
            rests = [s[m:-1] for s in seqs]  # tokens whose next-token logits are needed
            width = max(len(r) for r in rests)
            logits = None
            if width:
                cache = out.past_key_values
                cache.batch_repeat_interleave(len(seqs))
                inp = torch.tensor([r + [0] * (width - len(r)) for r in rests])
                mask = torch.tensor([[1] * (m + len(r)) + [0] * (width - len(r)) for r in rests])
                logits = self.model(inp, past_key_values=cache, attention_mask=mask).logits.float().log_softmax(-1)
        scores = []
        for i, (seq, start) in enumerate(zip(seqs, starts)):
            scores.append([float(last[seq[p]]) if p == m else float(logits[i, p - m - 1, seq[p]])
                           for p in range(start, len(seq))])
        return scores, [0] + [m] * (len(seqs) - 1)
