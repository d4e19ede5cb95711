"""The expressions a program appends to its state: text, gen, select, role markers, and SGLang's
`gen` / `gen_int` / `gen_string` / `select` / role constructors with SGLang's argument names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

# The regexes a typed gen is constrained by (SGLang's names, importable as `sglang.lang.ir.REGEX_*`).
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""
# A typed number ends at its first space or newline (stop strings, cut from the value). Its regex
# lets the token that brings that space through whole (e.g. " hours" after "24"): the stop ends the
# gen there, so the value is the same as under REGEX_INT, and a small model is not forced to pick
# another digit when its next word starts with a space.
_STOP_TAIL = r"([ \n].*)?"
DTYPE_REGEX = {"int": r"[-+]?[0-9]+" + _STOP_TAIL, "float": r"[-+]?[0-9]*\.?[0-9]+" + _STOP_TAIL,
               "bool": REGEX_BOOL, "str": REGEX_STR}
DTYPE_STOPS = {"int": [" ", "\n"], "float": [" ", "\n"]}


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
    """One generation; None means "the run's default" for every option."""

    name: str | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    seed: int | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    dtype: str | None = None
    regex: str | None = None
    json_schema: Any = None


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


@dataclass
class VarScopeBegin(Expr):
    name: str


@dataclass
class VarScopeEnd(Expr):
    name: str


@dataclass
class Call(Expr):
    """`other_program(...)` called inside a running program: appending it runs that program's body
    on the appending state (function composition)."""

    func: Callable
    args: tuple
    kwargs: dict


def dtype_name(dtype: type | str) -> str:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", str(dtype))
    if name not in DTYPE_REGEX:
        raise ValueError(f"unsupported dtype {dtype!r}; use int, float, bool or str")
    return name


def gen(name: str | None = None, max_tokens: int | None = None, min_tokens: int | None = None, n: int | None = None,
        stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None, stop_regex: Any = None,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        min_p: float | None = None, frequency_penalty: float | None = None, presence_penalty: float | None = None,
        ignore_eos: bool | None = None, return_logprob: bool | None = None, logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None, return_text_in_logprobs: bool | None = None,
        dtype: type | str | None = None, choices: list[str] | None = None, choices_method: Any = None,
        regex: str | None = None, json_schema: Any = None, seed: int | None = None) -> Expr:
    """Generate into variable `name` (SGLang's arguments; `seed` is radixlm's). With `choices` it is
    a `select`. A typed gen (`dtype=int|float|bool|str`) is constrained by `REGEX_*`; its variable
    holds the generated text, as in SGLang."""
    if choices:
        return select(name, choices, choices_method=choices_method)
    if n not in (None, 1):
        raise ValueError("gen(n>1) is not supported in a program; use s.fork(n) for several samples")
    if stop_regex:
        raise ValueError("gen(stop_regex=...) is not supported; use stop strings or a regex constraint")
    if dtype is not None:
        dtype = dtype_name(dtype)
        if regex is not None or json_schema is not None:
            raise ValueError("give dtype or regex/json_schema, not both")
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f"invalid regex {regex!r}: {e}") from None
        if json_schema is not None:
            raise ValueError("give regex or json_schema, not both")
    return Gen(name, max_tokens, min_tokens, stop, stop_token_ids, temperature, top_p, top_k, min_p,
               frequency_penalty, presence_penalty, ignore_eos, seed, return_logprob, logprob_start_len,
               top_logprobs_num, return_text_in_logprobs, dtype, regex, json_schema)


def gen_int(name: str | None = None, **options: Any) -> Expr:
    """A gen constrained to an integer (REGEX_INT, ending at a space or newline)."""
    return gen(name, dtype=int, **options)


def gen_string(name: str | None = None, **options: Any) -> Expr:
    """A gen constrained to a double-quoted string (REGEX_STR)."""
    return gen(name, dtype=str, **options)


def select(name: str | None = None, choices: list[str] | None = None, temperature: float = 0.0,
           choices_method: Any = None) -> Select:
    """Pick one of `choices` by the model's likelihood (see `choices.py` for the methods)."""
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    if temperature > 1e-5:
        raise ValueError("select scores choices deterministically; temperature must be 0")
    return Select(name, [str(c) for c in choices], choices_method)


def role_block(role: str, expr: Any = None) -> ExprList:
    """`expr` between the role's begin and end markers."""
    return ExprList([RoleBegin(role)] + ([] if expr is None else [expr]) + [RoleEnd(role)])


def system(expr: Any = None) -> ExprList:
    return role_block("system", expr)


def user(expr: Any = None) -> ExprList:
    return role_block("user", expr)


def assistant(expr: Any = None) -> ExprList:
    return role_block("assistant", expr)


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
