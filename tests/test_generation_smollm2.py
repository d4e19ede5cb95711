"""Generation controls on SmolLM2: grammars (JSON schema, regex), jump-forward, stops, seeds, logprobs."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from radixlm.engine.engine import Engine, EngineConfig
from radixlm.protocol import Constraint, SamplingParams

pytestmark = pytest.mark.slow

NAME = {"type": "string", "maxLength": 24}
SCHEMAS = [
    {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"city": NAME, "country": NAME, "population": {"type": "integer"}},
     "required": ["city", "country", "population"]},
    {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}, "score": {"type": "number"}},
     "required": ["colour", "score"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 3}},
     "required": ["tags"]},
    {"type": "object", "properties": {"title": NAME, "author": {"type": "object", "properties": {"first": NAME, "last": NAME},
                                                                "required": ["first", "last"]}},
     "required": ["title", "author"]},
    {"type": "object", "properties": {"answer": {"type": "boolean"}, "reason": NAME}, "required": ["answer", "reason"]},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3,
                                                "items": {"type": "object", "properties": {"name": NAME, "qty": {"type": "integer"}},
                                                          "required": ["name", "qty"]}}},
     "required": ["items"]},
    {"type": "object", "properties": {"name": NAME, "nickname": NAME, "email": NAME}, "required": ["name"]},
    {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}, "unit": {"enum": ["m", "km"]}},
     "required": ["x", "y", "unit"]},
    {"type": "object", "properties": {"status": {"enum": ["ok", "error"]}, "code": {"type": "integer", "minimum": 100, "maximum": 599},
                                      "detail": NAME}, "required": ["status", "code"]},
]


def closed(schema: dict) -> dict:
    """No properties beyond the listed ones (as structured-output APIs require), so outputs stay bounded."""
    if schema.get("type") == "object":
        schema = {**schema, "additionalProperties": False,
                  "properties": {k: closed(v) for k, v in schema["properties"].items()}}
    if schema.get("type") == "array":
        schema = {**schema, "items": closed(schema["items"])}
    return schema


SCHEMAS = [closed(s) for s in SCHEMAS]
PROMPTS = ["Describe a person.", "Tell me about a place.", "Give me some data.", "Summarise a book.", "Answer in JSON."]
# Bounded repetitions: a 135M model may otherwise never leave a `[a-z]+`.
REGEXES = [r"\d{3}-\d{4}", r"(yes|no)", r"[A-Z][a-z]{2,8}", r"\d{1,6}\.\d{2}", r"(red|green|blue) (car|bike)",
           r"[a-z]{1,10}@[a-z]{1,10}\.com", r"\d{4}-\d{2}-\d{2}", r"(true|false)", r"#[0-9a-f]{6}", r"[A-Z]{3}\d{2}"]


def engine_on(smollm2, **cfg) -> Engine:
    return Engine(smollm2.model, EngineConfig(**cfg), smollm2.eos_token_ids, smollm2.tokenizer)


def chat(engine: Engine, text: str) -> list[int]:
    return engine.prompt_ids(messages=[{"role": "user", "content": text}])


def test_json_schemas_always_parse_and_validate(smollm2):
    engine = engine_on(smollm2)
    jobs = [(schema, chat(engine, f"{p} Reply with JSON.")) for schema in SCHEMAS for p in PROMPTS]
    results = engine.generate_each(
        [(ids, SamplingParams(max_new_tokens=160, constraint=Constraint(json_schema=schema))) for schema, ids in jobs])
    for (schema, _), r in zip(jobs, results):
        value = json.loads(r.text)
        jsonschema.validate(value, schema)
    engine.check_integrity()


def test_regex_outputs_fullmatch(smollm2):
    engine = engine_on(smollm2)
    jobs = [(rx, chat(engine, "Give one example value.")) for rx in REGEXES]
    results = engine.generate_each([(ids, SamplingParams(max_new_tokens=40, constraint=Constraint(regex=rx))) for rx, ids in jobs])
    for (rx, _), r in zip(jobs, results):
        assert re.fullmatch(rx, r.text), (rx, r.text)


def test_jump_forward_keeps_greedy_output_and_saves_passes(smollm2):
    schema = SCHEMAS[4]
    outputs, passes = [], []
    for jump in (True, False):
        engine = engine_on(smollm2, jump_forward=jump)
        ids = chat(engine, "Summarise a book as JSON.")
        r = engine.generate([ids], SamplingParams(max_new_tokens=120, constraint=Constraint(json_schema=schema)))[0]
        outputs.append(r.output_ids)
        passes.append(engine.stats.forward_passes)
    assert outputs[0] == outputs[1]
    assert passes[0] < passes[1]


def test_constrained_and_free_requests_in_one_batch_match_running_alone(smollm2):
    engine = engine_on(smollm2)
    jobs = [
        (chat(engine, "Tell me about a place. Reply with JSON."), SamplingParams(max_new_tokens=60, constraint=Constraint(json_schema=SCHEMAS[1]))),
        (chat(engine, "What is the capital of France?"), SamplingParams(max_new_tokens=20)),
        (chat(engine, "Give one example value."), SamplingParams(max_new_tokens=20, constraint=Constraint(regex=REGEXES[4]))),
        (chat(engine, "Name three colours."), SamplingParams(max_new_tokens=20)),
    ]
    together = engine.generate_each(jobs)
    for (ids, params), r in zip(jobs, together):
        alone = engine_on(smollm2).generate([ids], params)[0]
        assert alone.output_ids == r.output_ids


def test_stop_strings_across_token_boundaries_are_caught_and_trimmed(smollm2):
    engine = engine_on(smollm2)
    ids = chat(engine, "Write a short story about a robot who learns to paint.")
    free = engine.generate([ids], SamplingParams(max_new_tokens=40))[0]
    tok = smollm2.tokenizer
    pieces = [tok.decode([t]) for t in free.output_ids]
    k = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]  # straddles the boundary between tokens k and k + 1
    r = engine.generate([ids], SamplingParams(max_new_tokens=40, stop=("never-there", stop)))[0]
    assert r.matched_stop == stop
    assert r.text == free.text[: free.text.index(stop)]
    assert r.finish_reason.value == "stop"


def test_seeded_sampling_is_reproducible(smollm2):
    engine = engine_on(smollm2)
    ids = chat(engine, "Write a creative sentence.")
    params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=1234)
    a = engine.generate([ids], params)[0]
    b = engine.generate([ids, chat(engine, "Another prompt in the batch.")], params)[0]
    c = engine.generate([ids], SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=99))[0]
    assert a.output_ids == b.output_ids
    assert a.output_ids != c.output_ids


def test_prompt_logprobs_equal_hf_log_softmax(smollm2, hf_smollm2):
    engine = engine_on(smollm2)
    ids = chat(engine, "What is the capital of France?")
    engine.generate([ids], SamplingParams(max_new_tokens=2))  # cache the prompt: logprobs must recompute
    start = 5
    r = engine.generate([ids], SamplingParams(max_new_tokens=3, logprob_start_len=start, logprobs=True, top_logprobs=3))[0]
    with torch.inference_mode():
        ref = torch.log_softmax(hf_smollm2(torch.tensor([ids])).logits[0].float(), dim=-1)
    assert len(r.prompt_logprobs) == len(ids) - start
    for offset, (lp, token) in enumerate(r.prompt_logprobs):
        pos = start + offset
        assert token == ids[pos]
        assert abs(lp - ref[pos - 1, token].item()) < 1e-3
    for top in r.prompt_top_logprobs + r.output_top_logprobs:
        values = [v for v, _ in top]
        assert len(top) == 3 and values == sorted(values, reverse=True)
    for (lp, token), top in zip(r.output_logprobs, r.output_top_logprobs):
        assert lp <= top[0][0] + 1e-6
        assert token != top[0][1] or abs(lp - top[0][0]) < 1e-5
