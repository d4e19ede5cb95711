"""The one schema walker both adapters bound their grammars with (radixlm.adapters.schema_bounds)."""

from __future__ import annotations

import copy

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from radixlm.adapters.schema_bounds import MAX_SAFE_INTEGER, bound_schema

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "nick": {"type": ["string", "null"]},
        "code": {"type": "string", "pattern": "^[A-Z]+$"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "count": {"type": "integer", "exclusiveMinimum": 0},
        "kind": {"enum": ["a", "b"]},
        "meta": {"type": "object", "properties": {"x": {"type": "integer"}}},
    },
    "default": {"type": "string"},
}


def test_bounds_are_added_only_where_the_schema_sets_none():
    before = copy.deepcopy(SCHEMA)
    out = bound_schema(SCHEMA, 10, max_items=3, close_objects=True, bound_integers=True)
    assert SCHEMA == before  # the caller's schema is untouched
    p = out["properties"]
    assert p["name"]["maxLength"] == 10 and p["nick"]["maxLength"] == 10
    assert "maxLength" not in p["code"] and "maxLength" not in p["kind"]
    assert p["tags"]["maxItems"] == 3 and p["tags"]["items"]["maxLength"] == 10
    assert p["count"] == {"type": "integer", "exclusiveMinimum": 0, "maximum": MAX_SAFE_INTEGER}
    assert p["meta"]["additionalProperties"] is False and out["additionalProperties"] is False
    assert p["meta"]["properties"]["x"]["minimum"] == -MAX_SAFE_INTEGER
    assert out["default"] == {"type": "string"}  # data, not a schema


def test_properties_named_like_literal_keywords_are_bounded_too():
    schema = {"type": "object", "properties": {"examples": {"type": "string"}, "default": {"type": "integer"},
                                               "enum": {"type": "array", "items": {"type": "string"}}}}
    p = bound_schema(schema, 10, max_items=3, bound_integers=True)["properties"]
    assert p["examples"]["maxLength"] == 10
    assert p["default"]["maximum"] == MAX_SAFE_INTEGER
    assert p["enum"]["maxItems"] == 3 and p["enum"]["items"]["maxLength"] == 10


def test_each_option_is_off_unless_asked():
    out = bound_schema(SCHEMA, None)
    assert out == SCHEMA


@given(st.text(max_size=30), st.lists(st.text(max_size=5), max_size=6), st.integers(-10**20, 10**20))
def test_what_the_bounded_schema_accepts_the_original_accepts(name, tags, count):
    value = {"name": name, "tags": tags, "count": count}
    bounded = bound_schema(SCHEMA, 10, max_items=3, close_objects=True, bound_integers=True)
    if jsonschema.Draft202012Validator(bounded).is_valid(value):
        assert jsonschema.Draft202012Validator(SCHEMA).is_valid(value)
