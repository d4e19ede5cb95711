"""Command-line flags derived from a config dataclass, so every option is written once.

A field `foo_bar: int = 3` becomes `--foo-bar INT` (default 3); a bool field becomes the pair
`--foo-bar/--no-foo-bar`; a field typed `X | None` may be left out. Field metadata may carry `help`
and `choices`. The same naming rule turns keyword options (`connect(**engine_options)`) back into
flags for a spawned `radixlm serve`, so an option accepted by one is accepted by the other.
Torch-free: the client uses `options_to_flags`; the command line uses the other two.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(hint: Any) -> type:
    """`int` for `int` and for `int | None`; the field's one non-None type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the dataclass `cls` (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, type=kind, default=default,
                                choices=f.metadata.get("choices"),
                                help=f"{help_text} (default: %(default)s)" if default is not None else help_text)


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """An instance of `cls` from the parsed flags that `add_dataclass_flags` added."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def options_to_flags(options: dict[str, Any]) -> list[str]:
    """Flags for keyword options: `{"chunk_size": 64, "radix_cache": False}` ->
    `["--chunk-size", "64", "--no-radix-cache"]`; None values are left out (the field's default)."""
    flags: list[str] = []
    for name, value in options.items():
        if not name.isidentifier():
            raise TypeError(f"invalid engine option name {name!r}")
        flag = flag_name(name)
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            flags += [flag, str(value)]
    return flags
