"""Grammar-constrained decoding with llguidance on the SmolLM2 tokenizer (no model forward passes)."""

from __future__ import annotations

import json
import random
import re
import time

import jsonschema
import pytest
import torch

from radixlm.engine.grammar import GrammarBackend, GrammarError, GrammarState, fill_allowed
from radixlm.protocol import Constraint, json_schema_of
from radixlm.engine.model_source import resolve_model
from radixlm.engine.tokenizer import Tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "blue"]},
    },
    "required": ["name", "age", "ok", "color"],
    "additionalProperties": False,
}
NAME_ONLY = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(resolve_model("smollm2"))


@pytest.fixture(scope="module")
def backend(tok: Tokenizer) -> GrammarBackend:
    return GrammarBackend(tok.hf, tok.vocab_size)


def allowed_ids(state: GrammarState) -> list[int]:
    return state.allowed_mask().nonzero().flatten().tolist()


def generate(state: GrammarState, eos: int, seed: int, jump_forward: bool = False, max_steps: int = 200) -> list[int]:
    """Sample uniformly among allowed tokens (taking EOS half the time it is allowed) until the grammar ends."""
    rng = random.Random(seed)
    out: list[int] = []
    for _ in range(max_steps):
        if state.is_finished:
            return out
        if jump_forward and (forced := state.forced_tokens()):
            state.consume_many(forced)
            out += forced
            continue
        allowed = allowed_ids(state)
        token = eos if eos in allowed and rng.random() < 0.5 else rng.choice(allowed)
        state.consume(token)
        if token == eos:
            assert state.is_finished
            return out
        out.append(token)
    raise AssertionError(f"grammar did not finish in {max_steps} steps")


@pytest.mark.parametrize(
    "spec, message",
    [
        (Constraint(regex="("), r"(?s)invalid regex '\(': .*unclosed group"),
        (Constraint(regex="a{3,1}"), "invalid repetition count"),
        (Constraint(json_schema={"type": "foo"}), "invalid JSON schema: Invalid type: foo"),
        (Constraint(json_schema=[1]), "invalid JSON schema: expected a JSON object"),
        (Constraint(json_schema={"type": "string", "format": "weird"}), "invalid JSON schema: Unknown format: weird"),
        (Constraint(lark="start: foo"), 'invalid Lark grammar: .*unknown name: "foo"'),
        (Constraint(choices=[]), "invalid choices"),
        (Constraint(choices=["a", 1]), "invalid choices"),
        (Constraint(regex=7), "regex must be a string"),
        (Constraint(regex="a", lark="start: /a/"), "exactly one of"),
        (Constraint(), "exactly one of"),
    ],
)
def test_invalid_grammars_raise_naming_the_problem(backend, spec, message):
    with pytest.raises(GrammarError, match=message):
        backend.compile(spec)


def test_schema_text_is_read_as_an_object_naming_the_problem():
    assert list(json_schema_of('{"b": 1, "a": 2}')) == ["b", "a"]  # key order is the output's
    with pytest.raises(ValueError, match="invalid JSON schema: not valid JSON: Expecting property name"):
        json_schema_of("{bad")
    with pytest.raises(ValueError, match="invalid JSON schema: expected a JSON object"):
        json_schema_of("[1]")


def test_compile_is_cached(backend):
    spec = Constraint(json_schema={**PERSON, "title": "cache-test"})
    start = time.perf_counter()
    first = backend.compile(spec)
    cold = time.perf_counter() - start
    warm = float("inf")
    for _ in range(5):  # best of a few: robust to a busy machine
        start = time.perf_counter()
        second = backend.compile(Constraint(json_schema={**PERSON, "title": "cache-test"}))
        warm = min(warm, time.perf_counter() - start)
        assert second is first
    assert warm < cold / 5
    reordered = dict(reversed(list({**PERSON, "title": "cache-test"}.items())))  # another output order
    assert backend.compile(Constraint(json_schema=reordered)) is not first


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("jump_forward", [False, True])
def test_regex_output_fullmatches(backend, tok, seed, jump_forward):
    pattern = r"[a-z]{2,5}-[0-9]{2}(\.[A-Z]{1,3})?"
    ids = generate(backend.new_state(Constraint(regex=pattern)), 2, seed, jump_forward)
    assert re.fullmatch(pattern, tok.decode(ids))


@pytest.mark.parametrize("seed", range(4))
def test_choices_output_is_one_of_them(backend, tok, seed):
    options = ["red", "red wine", "green", 'say "hi"\\n', "ünï 😀", "a|b (c)"]
    ids = generate(backend.new_state(Constraint(choices=options)), 2, seed)
    assert tok.decode(ids) in options


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("jump_forward", [False, True])
def test_json_schema_output_parses_and_validates(backend, tok, seed, jump_forward):
    ids = generate(backend.new_state(Constraint(json_schema=PERSON)), 2, seed, jump_forward)
    value = json.loads(tok.decode(ids))
    jsonschema.validate(value, PERSON)
    assert list(value) == list(PERSON["properties"])  # properties come out in schema order


def test_json_forced_prefix_and_rest(backend, tok):
    state = backend.new_state(Constraint(json_schema=NAME_ONLY))
    forced = state.forced_tokens()
    assert forced == state.forced_tokens()  # computing them consumes nothing
    prefix = tok.decode(forced)
    assert prefix.startswith('{"name"') and '{"name": "'.startswith(prefix)
    state.consume_many(forced)
    rest = '{"name": "bob"}'[len(prefix) :]
    state.consume_many(tok.encode(rest))
    assert state.is_finished
    assert json.loads(tok.decode(forced + tok.encode(rest))) == {"name": "bob"}


def test_json_has_no_free_whitespace(backend, tok):
    state = backend.new_state(Constraint(json_schema=NAME_ONLY))
    with pytest.raises(GrammarError):
        state.consume_many(tok.encode("{\n"))
    state.consume_many(tok.encode('{"name": "x"}'))
    assert state.is_finished and allowed_ids(state) == [2]


def test_regex_forced_tokens_then_digit_then_eos(backend, tok):
    state = backend.new_state(Constraint(regex=r"abc[0-9]"))
    forced = state.forced_tokens()
    assert tok.decode(forced) == "abc"
    before = state.allowed_mask()
    assert torch.equal(state.allowed_mask(), before) and before[forced[0]]
    state.consume_many(forced)
    assert state.forced_tokens() == []
    digits = allowed_ids(state)
    assert sorted(tok.decode([t]) for t in digits) == list("0123456789")
    state.consume(tok.encode("7")[0])
    assert state.is_finished and state.forced_tokens() == [] and allowed_ids(state) == [2]


def test_eos_allowed_only_when_accepting(backend, tok):
    state = backend.new_state(Constraint(regex="a+"))
    assert not state.allowed_mask()[2]
    state.consume(tok.encode("a")[0])
    mask = state.allowed_mask()
    assert mask[2] and mask[tok.encode("a")[0]] and not state.is_finished
    state.consume(2)
    assert state.is_finished


def test_disallowed_tokens_raise_and_leave_the_state_usable(backend, tok):
    state = backend.new_state(Constraint(regex="abc"))
    with pytest.raises(GrammarError, match="not allowed"):
        state.consume(tok.encode("x")[0])
    with pytest.raises(GrammarError, match="at position 1"):
        state.consume_many(tok.encode("ab") + tok.encode("d"))
    assert tok.decode(state.forced_tokens()) == "abc"  # nothing was consumed
    state.consume_many(tok.encode("ab"))
    state.consume_many(tok.encode("c"))
    assert state.is_finished
    with pytest.raises(GrammarError):
        state.consume(tok.encode("c")[0])


def test_fill_allowed_batches_rows(backend, tok):
    a = backend.new_state(Constraint(regex=r"[0-9]+"))
    b = backend.new_state(Constraint(json_schema=NAME_ONLY))
    b.consume_many(tok.encode('{"name": "a'))
    states = [None, a, None, b]
    mask = fill_allowed(states, tok.vocab_size)
    assert mask.shape == (4, tok.vocab_size) and mask.dtype == torch.bool
    assert mask[0].all() and mask[2].all()
    assert torch.equal(mask[1], a.allowed_mask()) and torch.equal(mask[3], b.allowed_mask())
    assert 0 < mask[1].sum() < mask[3].sum() < tok.vocab_size
    wide = fill_allowed(states, tok.vocab_size + 64)  # model logits wider than the tokenizer
    assert wide[0].all() and not wide[1, tok.vocab_size :].any()
    assert torch.equal(wide[1, : tok.vocab_size], mask[1])
    assert fill_allowed([None, None], tok.vocab_size) is None
