"""One vocabulary: the client's keyword options are the fields of `radixlm.protocol.SamplingParams`, the
wire carries that struct as it is (a schema as an object, choices as a list), and every adapter and
front that knows `max_tokens` reaches the same `max_new_tokens` and the same default."""

from __future__ import annotations

import msgspec
import pytest
from dspy.lm15 import Config, Message, Request

from radixlm import protocol as P
from radixlm.adapters.dspy_mapping import request_options
from radixlm.adapters.langchain import ChatRadixLM
from radixlm.client import _generate_message, sampling_params
from radixlm.lang.ir import gen
from radixlm.lang.options import resolve

SCHEMA = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}


def test_keyword_options_are_the_struct_fields_under_their_own_names():
    msg = _generate_message("r1", "hi", False, dict(
        max_new_tokens=9, temperature=0.5, top_logprobs=3, logprobs=True, logprob_start_len=0, stop="\n",
        json_schema=SCHEMA, trace_id="t"))
    s = msg.sampling
    assert (s.max_new_tokens, s.temperature, s.top_logprobs, s.logprobs, s.logprob_start_len, s.stop) == \
        (9, 0.5, 3, True, 0, ["\n"])
    assert s.constraint == P.Constraint(json_schema=SCHEMA) and msg.trace_id == "t"
    back = P.decode_request(P.encode(msg))
    assert back == msg and list(back.sampling.constraint.json_schema["properties"]) == ["b", "a"]  # order kept


def test_a_schema_as_text_and_choices_as_a_tuple_travel_as_object_and_list():
    assert sampling_params({"json_schema": '{"type": "string"}'}).constraint.json_schema == {"type": "string"}
    assert sampling_params({"choices": ("x", "y")}).constraint.choices == ["x", "y"]
    with pytest.raises(ValueError, match="invalid JSON schema: not valid JSON"):
        sampling_params({"json_schema": "{bad"})
    with pytest.raises(TypeError, match="unknown generation option.*top_k_logprobs"):
        sampling_params({"top_k_logprobs": 2})


def test_wire_rejects_a_schema_that_is_not_an_object():
    raw = msgspec.msgpack.encode({"type": "generate", "rid": "r", "text": "hi",
                                  "sampling": {"constraint": {"json_schema": "{}"}}})
    with pytest.raises(msgspec.ValidationError, match="json_schema"):
        P.decode_request(raw)


def test_per_sample_seed_keeps_the_struct_frozen():
    params = P.SamplingParams(seed=5, stop=["x"])
    with pytest.raises(AttributeError):
        params.seed = 6  # type: ignore[misc]
    assert msgspec.structs.replace(params, seed=6).seed == 6 and params.seed == 5


def _dspy_request(**config) -> Request:
    return Request(model="radixlm/smollm2", messages=(Message.user("hello"),), config=Config(**config))


def test_every_front_maps_max_tokens_the_same_way_with_one_default():
    assert P.max_new_tokens_of(None) == P.DEFAULT_MAX_NEW_TOKENS == P.SamplingParams().max_new_tokens
    assert request_options(_dspy_request(), None)["max_new_tokens"] == P.DEFAULT_MAX_NEW_TOKENS
    assert request_options(_dspy_request(max_tokens=7), None)["max_new_tokens"] == 7
    llm = ChatRadixLM(endpoint="ipc:///nonexistent/radixlm-test.sock")
    assert llm._options(None, {})["max_new_tokens"] == P.DEFAULT_MAX_NEW_TOKENS
    assert llm._options(None, {"max_tokens": 7})["max_new_tokens"] == 7
    assert resolve(gen("x"), {})[0]["max_new_tokens"] == P.DEFAULT_MAX_NEW_TOKENS
    assert resolve(gen("x", max_tokens=7), {})[0]["max_new_tokens"] == 7
