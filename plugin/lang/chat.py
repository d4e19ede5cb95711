"""Chat roles as text: find the model's role markers by checking candidate templates against the
engine's own rendering of the model's chat template.

The engine renders chat messages itself but never returns the rendered text; it does return prompt
logprobs with token ids. So a candidate template (e.g. ChatML) is accepted only when its text,
tokenized by the engine, gives the same token ids as the engine's rendering of the same messages at
every position from 1 on AND the same logprob at every position (which also pins down token 0,
whose id the engine does not report). The first candidate that matches is used; None if none does.
"""

from __future__ import annotations

from typing import Any

from ..connection import EngineError

ROLES = ("system", "user", "assistant")

CANDIDATES: dict[str, dict[str, tuple[str, str]]] = {
    "chatml": {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ROLES},
    "llama3": {r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>") for r in ROLES},
}
# The generation prompt the template appends after the messages is the assistant's begin marker.
PROBE = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]


def render(parts: dict[str, tuple[str, str]], messages: list[dict], generation_prompt: bool = True) -> str:
    text = "".join(parts[m["role"]][0] + m["content"] + parts[m["role"]][1] for m in messages)
    return text + (parts["assistant"][0] if generation_prompt else "")


def _signature(client: Any, prompt: Any) -> list[tuple[float, int]] | None:
    try:
        r = client.generate(prompt, prefix_only=True, logprob_start_len=0)
    except EngineError:  # a model without a chat template answers with an error
        return None
    return [(e[0], e[1]) for e in (r.prompt_logprobs or [])[1:]] + [(0.0, -r.prompt_tokens)]


def _same(a: list[tuple[float, int]], b: list[tuple[float, int]]) -> bool:
    return len(a) == len(b) and all(x[1] == y[1] and abs(x[0] - y[0]) < 1e-3 for x, y in zip(a, b))


def probe_chat_template(client: Any) -> dict[str, tuple[str, str]] | None:
    target = _signature(client, PROBE)
    if target is None:
        return None
    for parts in CANDIDATES.values():
        candidate = _signature(client, render(parts, PROBE))
        if candidate is not None and _same(candidate, target):
            return parts
    return None
