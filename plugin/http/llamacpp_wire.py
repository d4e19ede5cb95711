"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) as a client dialect: the OpenAI
API, except for constraints. That server takes a JSON schema as `response_format: {"type": "json_object",
"schema": ...}` on chat requests only (it refuses OpenAI's `json_schema` type) and any constraint as a GBNF
`grammar`; it has no regex or Lark grammars."""

from __future__ import annotations

from typing import Any

from .. import protocol as P
from .openai_wire import OpenAIDialect

# The title llama-cpp-python's FastAPI app gives its OpenAPI description (how `connect` recognises it).
OPENAPI_TITLE = "llama.cpp Python API"


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal (quotes and backslashes escaped, control characters as \\xNN)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class LlamaCppPythonDialect(OpenAIDialect):
    """The OpenAI dialect with llama-cpp-python's forms of a constraint."""

    def constraint_fields(self, c: P.Constraint, chat: bool) -> dict[str, Any]:
        if c.choices is not None:
            return {"grammar": "root ::= " + " | ".join(gbnf_literal(choice) for choice in c.choices)}
        if c.json_schema is not None and chat:
            return {"response_format": {"type": "json_object", "schema": c.json_schema}}
        if c.json_schema is not None:
            raise ValueError("llama-cpp-python's server takes a JSON schema on chat messages only; send messages")
        kind = "a regex" if c.regex is not None else "a Lark grammar"
        raise ValueError(f"llama-cpp-python's server cannot constrain a reply to {kind} (it takes JSON schemas and "
                         "GBNF grammars): connect to a radixlm, SGLang or vLLM server for it; DSPy programs run "
                         "on this server with dspy.JSONAdapter() (JSON-schema constrained replies)")
