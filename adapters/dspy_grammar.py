"""Grammars for the replies DSPy's adapters parse, built from the signature an adapter formatted.

  * ChatAdapter (and any adapter that parses like it): `chat_grammar`, a Lark grammar of the
    `[[ ## field ## ]]` sections in the signature's order, each value in the form `parse_value`
    reads for its type (free text on one line, `True`/`False`, a Literal's bare value, JSON under
    the type's JSON schema otherwise), ending with `[[ ## completed ## ]]`.
  * JSONAdapter (and its subclasses): `output_schema`, the full JSON schema of the output fields,
    including open `dict` fields (which DSPy itself can only send as schema-less JSON mode).
In a running `dspy.ReAct` step each tool's arguments follow that tool's parameter schema
(`react_step_schema` / the ReAct branch of `chat_grammar`). Free strings are capped to a share of the
token budget (`string_budget`), so a reply always ends inside `max_tokens` and parses."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal, get_args, get_origin

import pydantic

from radixlm.protocol import max_new_tokens_of

from .schema_bounds import allows_type, bound_schema

# Values an open dict[str, Any] field may hold: scalars only, so a small model cannot recurse into
# nested objects until max_tokens.
FLAT_VALUE = {"type": ["string", "number", "boolean", "null"]}
COMPLETED = "[[ ## completed ## ]]"
MAX_ITEMS = 4
# JSON inside a Lark grammar written the way the engine writes a json_schema constraint (as json.dumps
# does, no free whitespace), so a small model cannot wander off into newlines between tokens.
LARK_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _is_open_mapping(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "object" and prop.get("additionalProperties") in (True, None) \
        and "properties" not in prop


def _flatten_mappings(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "additionalProperties": FLAT_VALUE} if _is_open_mapping(schema) else schema


def closed(schema: Any) -> Any:
    """`schema` with every object of declared properties closed and all of them required (what a
    pydantic model validates when the reply holds exactly its fields)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k not in ("enum", "const", "default") else v for k, v in schema.items()}
    out.pop("default", None)
    if isinstance(out.get("properties"), dict):
        out["required"] = list(out["properties"])
        out.setdefault("additionalProperties", False)
    return out


def _lark_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def output_schema(signature: Any) -> dict[str, Any]:
    """A closed JSON schema of the signature's output fields, every field (and every field of a nested
    model) required; open dict[str, Any] fields hold scalar values."""
    fields = {name: (field.annotation, ...) for name, field in signature.output_fields.items()}
    schema = pydantic.create_model("DSPyProgramOutputs", **fields).model_json_schema()
    props = {name: _flatten_mappings({k: v for k, v in prop.items() if k != "json_schema_extra"})
             for name, prop in schema.get("properties", {}).items()}
    return closed({**schema, "properties": props})


def tool_arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool's parameter schema as a closed object of exactly its parameters."""
    params = {arg: {k: v for k, v in spec.items() if k != "default"} for arg, spec in parameters.items()}
    return {"type": "object", "properties": params, "required": list(params), "additionalProperties": False}


def react_tools(signature: Any, tools: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tools (name -> dspy.Tool) when `signature` is a step of the running dspy.ReAct that owns
    them (its next_tool_name is a Literal of exactly their names), else None."""
    fields = signature.output_fields
    if not tools or "next_tool_name" not in fields or "next_tool_args" not in fields:
        return None
    annotation = fields["next_tool_name"].annotation
    names = get_args(annotation) if get_origin(annotation) is Literal else ()
    order = list(fields)
    consecutive = order.index("next_tool_args") == order.index("next_tool_name") + 1
    return tools if consecutive and set(names) == set(tools) else None


def react_step_schema(schema: dict[str, Any], tools: dict[str, Any]) -> dict[str, Any]:
    """A ReAct step schema (next_tool_name, next_tool_args) as one branch per tool, in which the
    arguments follow that tool's own parameter schema."""
    props = schema["properties"]
    return {"anyOf": [{**schema, "properties": {**props, "next_tool_name": {"const": name},
                                                "next_tool_args": tool_arguments(tool.args)}}
                      for name, tool in tools.items()]}


def cap_strings(schema: Any, max_chars: int) -> Any:
    """`schema` with a maxLength of `max_chars` on every free string (no maxLength, enum, const,
    pattern or format of its own) and at most MAX_ITEMS items in an array without a maxItems, so
    greedy decoding cannot loop inside one string or list until max_tokens cuts the reply off."""
    return bound_schema(schema, max_chars, max_items=MAX_ITEMS)


def text_slots(schema: Any, defs: dict[str, Any] | None = None) -> int:
    """How many free strings a value of `schema` can hold at most (an array counts MAX_ITEMS times
    its items; enums, consts, numbers and booleans hold none)."""
    if not isinstance(schema, dict) or {"enum", "const"} & schema.keys():
        return 0
    defs = schema.get("$defs", defs) or {}
    if "$ref" in schema:
        return text_slots(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    if "anyOf" in schema:
        return max((text_slots(s, defs) for s in schema["anyOf"]), default=0)
    if allows_type(schema, "array"):
        return schema.get("maxItems", MAX_ITEMS) * text_slots(schema.get("items", {}), defs)
    if allows_type(schema, "object"):
        extra = schema.get("additionalProperties")
        return sum(text_slots(p, defs) for p in schema.get("properties", {}).values()) + \
            (MAX_ITEMS * text_slots(extra, defs) if isinstance(extra, dict) else 0)
    return 1 if allows_type(schema, "string") else 0


def string_budget(max_tokens: int | None, slots: int) -> int:
    """Characters each free string of a reply may take: the token budget (about 2 characters a
    token in the worst case) shared by the reply's `slots` free strings and a share for the markup."""
    return max(16, 2 * max_new_tokens_of(max_tokens) // (slots + 1))


def json_reply_schema(signature: Any, tools: dict[str, Any] | None, max_tokens: int | None) -> dict[str, Any]:
    """The JSON schema a JSONAdapter reply is decoded under (see the module docstring)."""
    schema = output_schema(signature)
    step_tools = react_tools(signature, tools)
    if step_tools is not None:
        schema = react_step_schema(schema, step_tools)
    return cap_strings(schema, string_budget(max_tokens, text_slots(schema)))


# ---- ChatAdapter --------------------------------------------------------------------------------

def lark_json(schema: dict[str, Any]) -> str:
    """`schema` as a Lark %json expression, written without free whitespace."""
    return f"%json {json.dumps({**schema, 'x-guidance': LARK_JSON_OPTIONS}, ensure_ascii=False)}"


def _annotation_schema(annotation: Any, max_chars: int) -> dict[str, Any]:
    schema = pydantic.TypeAdapter(annotation).json_schema()
    return cap_strings(closed(_flatten_mappings(schema)), max_chars)


def _chat_value(annotation: Any, max_chars: int) -> str:
    """A Lark expression of the text `parse_value` turns into `annotation`."""
    if annotation is str:
        # one line, not empty, neither a section header nor the "{field}" placeholder of the format
        return f"/[^\\s\\[{{][^\\n]{{0,{max_chars - 1}}}/"
    if annotation is bool:
        return '("True" | "False")'
    if get_origin(annotation) is Literal:
        return "(" + " | ".join(_lark_literal(str(v)) for v in get_args(annotation)) + ")"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "(" + " | ".join(_lark_literal(str(m.value)) for m in annotation) + ")"
    return lark_json(_annotation_schema(annotation, max_chars))


def _header(name: str) -> str:
    return f"[[ ## {name} ## ]]\n"


def chat_grammar(signature: Any, tools: dict[str, Any] | None, max_tokens: int | None, start: str = "start") -> str:
    """The Lark rules of a ChatAdapter reply to `signature` (see the module docstring), the reply
    being rule `start`."""
    fields = signature.output_fields
    step_tools = react_tools(signature, tools)
    max_chars = string_budget(max_tokens, text_slots(json_reply_schema(signature, tools, max_tokens)))
    parts = []
    for name, field in fields.items():
        if step_tools is not None and name == "next_tool_args":
            continue
        if step_tools is not None and name == "next_tool_name":
            parts.append("tool_step")
            continue
        parts.append(f"{_lark_literal(_header(name))} {_chat_value(field.annotation, max_chars)}")
    rules = [f"{start}: " + ' "\\n\\n" '.join(parts) + f' "\\n\\n" {_lark_literal(COMPLETED)}']
    if step_tools is not None:
        branches = [f"({_lark_literal(_header('next_tool_name') + name + chr(10) + chr(10) + _header('next_tool_args'))}"
                    f" {lark_json(cap_strings(tool_arguments(tool.args), max_chars))})"
                    for name, tool in step_tools.items()]
        rules.append("tool_step: " + " | ".join(branches))
    return "\n".join(rules) + "\n"
