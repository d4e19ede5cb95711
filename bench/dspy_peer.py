"""DSPy on the peer systems: a DSPy engine (DSPy 3.4's `complete(Request) -> Response` contract)
over a `PeerBackend`.

It maps requests with radixlm's own DSPy mapping (chat messages rendered with the model's
template; max_tokens, temperature, stop, response_format), so the prompts are the same token ids,
and it installs the same DSPy callbacks as radixlm's LM, so each reply is decoded under the grammar
of what the DSPy adapter in use parses (ReAct tool arguments included), as on the radixlm engine:
every system decodes under the same constraint. Only `complete` is used (the bench never streams through DSPy).
"""

from __future__ import annotations

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage

from radixlm.adapters.dspy_engine import RadixEngine
from radixlm.adapters.dspy_mapping import request_messages, request_options
from radixlm.adapters.dspy_plan import PlanCallback
from radixlm.adapters.dspy_trace import TraceCallback, install_callback

from .peer_backend import PeerBackend


class PeerEngine(RadixEngine):
    """Synchronous DSPy engine on a peer backend (calls are serialized by the backend's lock). Its
    replies are plain text: the bench's programs use DSPy's text-based tool use, not native calls."""

    supports_function_calling = False

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
    does, it installs radixlm's TraceCallback (a running dspy.ReAct publishes its tools through it) and
    PlanCallback (which adapter formatted the request), so each tool's arguments are held to its
    parameters on the peers too."""
    install_callback(TraceCallback)
    install_callback(PlanCallback)
    return dspy.LM(f"peer/{name}", engine=PeerEngine(backend), temperature=0.0, max_tokens=max_tokens, cache=False,
                   num_retries=0)
