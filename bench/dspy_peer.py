"""DSPy on the peer systems: a DSPy engine (DSPy 3.4's `complete(Request) -> Response` contract)
over a `PeerBackend`.

It maps requests with radixlm's own DSPy mapping (chat messages rendered with the model's
template; max_tokens, temperature, stop, response_format), so the prompts are the same token ids,
and it subclasses radixlm's `RadixEngine` so that radixlm's `JSONAdapter` gives it the same output
schema (ReAct tool arguments included) it gives the radixlm engine: every system decodes under the
same constraint. Only `complete` is used (the bench never streams through DSPy).
"""

from __future__ import annotations

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage

from radixlm.adapters.dspy_engine import RadixEngine
from radixlm.adapters.dspy_mapping import request_messages, request_options
from radixlm.adapters.dspy_trace import install_trace_callback

from .peer_backend import PeerBackend


class PeerEngine(RadixEngine):
    """Synchronous DSPy engine on a peer backend (calls are serialized by the backend's lock)."""

    def __init__(self, backend: PeerBackend) -> None:
        super().__init__(client=None, model="peer")
        self.backend = backend

    def complete(self, request) -> Response:
        opts = request_options(request, None)
        opts.pop("trace_id", None)
        out = self.backend.generate(self.backend.chat_prompt(request_messages(request)), **opts)
        u = out.usage
        return Response(id=None, model=request.model, message=Message.assistant([TextPart(out.text)]),
                        finish_reason=out.finish_reason,
                        usage=Usage(input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens,
                                    cache_read_tokens=u.cached_tokens),
                        provider_data={"cached_tokens": u.cached_tokens})


def peer_lm(backend: PeerBackend, name: str, max_tokens: int) -> dspy.LM:
    """A `dspy.LM` on a peer backend: greedy, DSPy's response cache off, no retries. As radixlm's LM
    does, it installs radixlm's TraceCallback, through which a running dspy.ReAct publishes its tools,
    so that JSONAdapter holds each tool's arguments to its parameters on the peers too (without it
    the peers decoded ReAct steps under a looser schema than radixlm)."""
    install_trace_callback()
    return dspy.LM(f"peer/{name}", engine=PeerEngine(backend), temperature=0.0, max_tokens=max_tokens, cache=False,
                   num_retries=0)
