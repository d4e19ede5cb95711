"""One config: every EngineConfig field is a `radixlm serve` flag and a `connect()` option, derived
from the dataclass, and reaches the engine with its value."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import radixlm
from radixlm.cli import build_parser
from radixlm.config_flags import _base_type, dataclass_from_args, flag_name, options_to_flags
from radixlm.engine.engine import EngineConfig

FIELDS = dataclasses.fields(EngineConfig)
HINTS = typing.get_type_hints(EngineConfig)


def other_value(f: dataclasses.Field) -> object:
    """A value for the field that differs from its default where the type allows it."""
    kind, default = _base_type(HINTS[f.name]), f.default
    if kind is bool:
        return not default
    if kind is int:
        return (default or 0) + 7
    if kind is float:
        return (default or 0.0) + 0.5
    choices = f.metadata.get("choices")
    return next((c for c in choices or () if c != default), default)


def parsed(flags: list[str]) -> EngineConfig:
    return dataclass_from_args(EngineConfig, build_parser().parse_args(["serve", *flags]))


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_each_field_is_a_serve_flag_and_a_connect_option(f):
    value = other_value(f)
    assert parsed(options_to_flags({f.name: value})) == EngineConfig(**{f.name: value})
    assert parsed([]) == EngineConfig(), "no flag: the field's default"


def test_all_fields_at_once_and_the_help_lists_them(capsys):
    values = {f.name: other_value(f) for f in FIELDS}
    assert parsed(options_to_flags(values)) == EngineConfig(**values)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert all(flag_name(f.name) in help_text for f in FIELDS)


def test_bool_flags_have_both_forms():
    assert parsed(["--no-radix-cache", "--no-jump-forward"]) == EngineConfig(radix_cache=False, jump_forward=False)
    assert options_to_flags({"radix_cache": True, "max_context": None}) == ["--radix-cache"]


# Values a real engine on SmolLM2 runs with (the generic ones above may not fit in memory).
RUNNABLE = {"kv_cache_tokens": 4096, "max_context": 512, "chunk_size": 256, "max_running_requests": 8,
            "reserve_clip": 128, "dedup_min_shared": 16, "attention_backend": "torch", "dtype": "float32"}


@pytest.mark.slow
def test_every_field_reaches_a_spawned_engine(tmp_path):
    """`connect(reserve_clip=128)` and `connect(dedup_min_shared=16)` used to kill the spawned engine."""
    values = {f.name: RUNNABLE.get(f.name, other_value(f)) for f in FIELDS}
    client = radixlm.connect(f"ipc://{tmp_path / 'engine.sock'}", model="smollm2", timeout=300, **values)
    try:
        assert client.info()["config"] == dataclasses.asdict(EngineConfig(**values))
        assert client.generate("Hello", max_new_tokens=2).completion_tokens == 2
    finally:
        client.shutdown()
