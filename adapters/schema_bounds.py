"""Bounds that keep a small greedy model from looping inside a JSON value until its token budget ends,
added to a JSON schema without changing what it accepts beyond them. One walker for both adapters: the
DSPy adapter caps strings and arrays, the LangChain adapter caps strings, closes objects and bounds
integers."""

from __future__ import annotations

from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
# Keys whose values are data, not schemas: never rewritten.
LITERAL_KEYS = frozenset({"const", "enum", "default", "examples"})
# Keys whose values map names (property names, definition names) to schemas: every schema is walked,
# whatever its name ("default" or "examples" named as a property is a schema there, not data).
SCHEMA_MAP_KEYS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# A string with one of these has its own bound (or a fixed set of values).
BOUNDED_STRING_KEYS = frozenset({"maxLength", "enum", "const", "pattern", "format"})


def allows_type(node: dict[str, Any], kind: str) -> bool:
    """Whether a schema's `type` (one name or a list of them) admits `kind`."""
    types = node.get("type")
    return types == kind or (isinstance(types, list) and kind in types)


def bound_schema(node: Any, max_string: int | None, *, max_items: int | None = None,
                 close_objects: bool = False, bound_integers: bool = False) -> Any:
    """`node` (a schema, or a list of them) with, wherever the schema sets none of its own:
    `maxLength: max_string` on every free string (None: no cap), `maxItems: max_items` on every array,
    `additionalProperties: false` on every object when `close_objects`, and JSON's safe-integer range on
    every integer when `bound_integers`. The caller's schema is not modified."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: v if k in LITERAL_KEYS else
               {name: walk(s) for name, s in v.items()} if k in SCHEMA_MAP_KEYS and isinstance(v, dict) else walk(v)
               for k, v in node.items()}
        if max_string and allows_type(out, "string") and not BOUNDED_STRING_KEYS & out.keys():
            out["maxLength"] = max_string
        if max_items is not None and allows_type(out, "array") and "maxItems" not in out:
            out["maxItems"] = max_items
        if close_objects and allows_type(out, "object") and "additionalProperties" not in out:
            out["additionalProperties"] = False
        if bound_integers and allows_type(out, "integer") and not {"enum", "const"} & out.keys():
            for bound, exclusive, value in (("minimum", "exclusiveMinimum", -MAX_SAFE_INTEGER),
                                            ("maximum", "exclusiveMaximum", MAX_SAFE_INTEGER)):
                if bound not in out and exclusive not in out:
                    out[bound] = value
        return out

    return walk(node)
