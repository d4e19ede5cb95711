"""DSPy adapters that use the engine's grammar-constrained decoding: `JSONAdapter` sends the full
output schema of a signature as a json_schema constraint, `ChatAdapter` falls back to it."""

from __future__ import annotations

from typing import Any

import dspy

from .dspy_engine import RadixEngine
from .dspy_trace import current_tools


def output_schema(signature, use_native_function_calling: bool, flat_mappings: bool = True) -> dict[str, Any]:
    """A JSON schema of the signature's output fields that the engine can enforce. Unlike
    DSPy's OpenAI-strict schema it allows open-ended mappings (dict[str, Any] -> any object), so
    e.g. ReAct's next_tool_name is held to its Literal of tool names instead of free JSON.
    `flat_mappings`: an open dict[str, Any] field takes scalar values only (a subset of what the
    annotation allows) so a small model cannot recurse into nested objects until max_tokens."""
    import pydantic
    from dspy.adapters.types.tool import ToolCalls

    fields = {}
    for name, field in signature.output_fields.items():
        if use_native_function_calling and field.annotation == ToolCalls:
            continue
        fields[name] = (field.annotation, ...)
    schema = pydantic.create_model("DSPyProgramOutputs", **fields).model_json_schema()
    for prop in schema.get("properties", {}).values():
        prop.pop("json_schema_extra", None)
        prop.pop("default", None)
        if flat_mappings and prop.get("type") == "object" and prop.get("additionalProperties") is True \
                and "properties" not in prop:
            prop["additionalProperties"] = {"type": ["string", "number", "boolean", "null"]}
    schema["required"] = list(schema.get("properties", {}))
    schema["additionalProperties"] = False
    return schema


def react_step_schema(schema: dict[str, Any], tools: dict[str, Any]) -> dict[str, Any]:
    """For a ReAct step schema (next_tool_name, next_tool_args), one branch per tool in which the
    arguments follow that tool's own parameter schema, so a called tool always gets the
    arguments it takes. Other schemas, or tools that do not match the name enum, pass unchanged."""
    props = schema.get("properties", {})
    names = props.get("next_tool_name", {}).get("enum")
    if "next_tool_args" not in props or names is None or set(names) != set(tools):
        return schema
    branches = []
    for name in names:
        params = {arg: {k: v for k, v in spec.items() if k != "default"} for arg, spec in tools[name].args.items()}
        if "$ref" in str(params):  # unresolved references: keep the generic argument object
            return schema
        args = {"type": "object", "properties": params, "required": list(params), "additionalProperties": False}
        branches.append({**schema, "properties": {**props, "next_tool_name": {"const": name}, "next_tool_args": args}})
    return {"anyOf": branches}


def cap_strings(schema: Any, max_chars: int) -> Any:
    """`schema` with a maxLength of `max_chars` on every free string (no maxLength, enum, const,
    pattern or format of its own), so greedy decoding cannot loop inside one string until
    max_tokens cuts the JSON off; the output then always parses."""
    if isinstance(schema, list):
        return [cap_strings(item, max_chars) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: cap_strings(v, max_chars) if k not in ("enum", "const") else v for k, v in schema.items()}
    types = out.get("type")
    if (types == "string" or (isinstance(types, list) and "string" in types)) and \
            not ({"maxLength", "enum", "const", "pattern", "format"} & out.keys()):
        out["maxLength"] = max_chars
    return out


def string_budget(max_tokens: int | None, schema: dict[str, Any]) -> int:
    """Characters each free string of an output may take: the token budget (about 3 characters a
    token), shared by the top-level string fields and a share for the JSON around them."""
    tokens = max_tokens or 512
    branches = schema.get("anyOf", [schema])
    strings = max(sum(1 for p in b.get("properties", {}).values() if p.get("type") == "string") for b in branches)
    return max(32, 3 * tokens // (strings + 1))


class JSONAdapter(dspy.JSONAdapter):
    """dspy.JSONAdapter that, on a radixlm LM, always sends the full output schema as a
    json_schema constraint (DSPy itself falls back to schema-less JSON mode for signatures with
    dict fields, such as ReAct's). Other LMs get DSPy's behaviour unchanged. A response_format
    passed by the caller wins. Inside a running dspy.ReAct, each tool's arguments are held to that
    tool's parameters (`react_step_schema`). Otherwise `flat_mappings=True` (default) holds
    dict[str, Any] fields to objects of scalar values; False allows any JSON values. Free strings
    are capped to a share of max_tokens (`cap_strings`), so the reply is complete JSON."""

    def __init__(self, *args: Any, flat_mappings: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flat_mappings = flat_mappings

    def _prepare_response_format(self, lm, lm_kwargs, signature):
        if not isinstance(getattr(lm, "engine", None), RadixEngine) or "response_format" in lm_kwargs:
            return super()._prepare_response_format(lm, lm_kwargs, signature)
        try:
            schema = output_schema(signature, self.use_native_function_calling, self.flat_mappings)
            schema = react_step_schema(schema, current_tools() or {})
            max_tokens = lm_kwargs.get("max_tokens", lm.kwargs.get("max_tokens"))
            schema = cap_strings(schema, string_budget(max_tokens, schema))
        except Exception:
            return super()._prepare_response_format(lm, lm_kwargs, signature)
        lm_kwargs["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "DSPyProgramOutputs", "schema": schema}}


class ChatAdapter(dspy.ChatAdapter):
    """dspy.ChatAdapter whose fallback on an unparsable reply is the schema-constrained
    `JSONAdapter` above."""

    def _make_json_adapter_fallback(self):
        return JSONAdapter(use_native_function_calling=self.use_native_function_calling,
                           parallel_tool_calls=self.parallel_tool_calls)
