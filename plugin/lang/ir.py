"""The expressions a program appends to its state: text, gen, select, role markers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Expr:
    """Something `s += ...` accepts; `a + b` chains expressions (strings included)."""

    def __add__(self, other: Any) -> "ExprList":
        return ExprList([self, other])

    def __radd__(self, other: Any) -> "ExprList":
        return ExprList([other, self])


@dataclass
class ExprList(Expr):
    items: list = field(default_factory=list)

    def __add__(self, other: Any) -> "ExprList":
        return ExprList([*self.items, other])

    def __radd__(self, other: Any) -> "ExprList":
        return ExprList([other, *self.items])


@dataclass
class Gen(Expr):
    name: str | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    regex: str | None = None
    json_schema: Any = None
    dtype: type | str | None = None
    ignore_eos: bool | None = None


@dataclass
class Select(Expr):
    name: str | None
    choices: list[str]
    choices_method: Any = None


@dataclass
class RoleBegin(Expr):
    role: str


@dataclass
class RoleEnd(Expr):
    role: str


# Regexes that constrain a typed gen, and the parsers that turn its text into the value.
DTYPE_REGEX = {
    "int": r"-?[0-9]{1,15}[ \n]?",  # an optional trailing space/newline lets the model end the number
    "float": r"-?[0-9]{1,15}(\.[0-9]{1,10})?[ \n]?",
    "bool": r"(True|False)",
    "str": r"\"[^\"\n]{0,200}\"",
}


class DTypeError(ValueError):
    """A typed gen produced text that does not parse as its dtype."""


def dtype_name(dtype: type | str) -> str:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", str(dtype))
    if name not in DTYPE_REGEX:
        raise ValueError(f"unsupported dtype {dtype!r}; use int, float, bool or str")
    return name


def parse_dtype(dtype: type | str, text: str) -> Any:
    name, t = dtype_name(dtype), text.strip()
    try:
        if name == "int":
            return int(t)
        if name == "float":
            return float(t)
        if name == "bool":
            if t in ("True", "true"):
                return True
            if t in ("False", "false"):
                return False
            raise ValueError(t)
        if len(t) >= 2 and t[0] == t[-1] == '"':
            return t[1:-1]
        raise ValueError(t)
    except ValueError:
        raise DTypeError(f"gen output {text!r} is not a {name}") from None


def gen(name: str | None = None, max_tokens: int | None = None, stop: str | list[str] | None = None,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        regex: str | None = None, json_schema: Any = None, dtype: type | str | None = None,
        choices: list[str] | None = None, seed: int | None = None, stop_token_ids: list[int] | None = None,
        ignore_eos: bool | None = None, choices_method: Any = None, **unsupported: Any) -> Expr:
    """Generate into variable `name`; with `choices` it is a `select`."""
    if unsupported:
        raise TypeError(f"gen() does not support: {', '.join(sorted(unsupported))}")
    if choices is not None:
        return Select(name, list(choices), choices_method)
    if dtype is not None:
        dtype_name(dtype)
        if regex is not None or json_schema is not None:
            raise ValueError("give dtype or regex/json_schema, not both")
    if regex is not None and json_schema is not None:
        raise ValueError("give regex or json_schema, not both")
    return Gen(name, max_tokens, stop, stop_token_ids, temperature, top_p, top_k, seed, regex, json_schema, dtype,
               ignore_eos)


def gen_int(name: str | None = None, **kw: Any) -> Expr:
    return gen(name, dtype=int, **kw)


def gen_string(name: str | None = None, **kw: Any) -> Expr:
    return gen(name, dtype=str, **kw)


def select(name: str | None = None, choices: list[str] | None = None, temperature: float = 0.0,
           choices_method: Any = None) -> Select:
    """Pick one of `choices` by the model's likelihood (see `choices.py` for the methods)."""
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    return Select(name, [str(c) for c in choices], choices_method)


def _role(role: str, expr: Any = None) -> ExprList:
    return ExprList([RoleBegin(role)] + ([] if expr is None else [expr]) + [RoleEnd(role)])


def system(expr: Any = None) -> ExprList:
    return _role("system", expr)


def user(expr: Any = None) -> ExprList:
    return _role("user", expr)


def assistant(expr: Any = None) -> ExprList:
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")
