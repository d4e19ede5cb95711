"""From a gen (and its run's defaults) to the engine request's options."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..protocol import max_new_tokens_of
from .ir import DTYPE_REGEX, DTYPE_STOPS, Gen
from .meta import LogprobAsk

# run()/run_batch() sampling keyword (SGLang's names) -> the Gen field it is the default of
RUN_DEFAULTS = {
    "max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "stop": "stop", "stop_token_ids": "stop_token_ids",
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty", "ignore_eos": "ignore_eos",
    "seed": "seed", "return_logprob": "return_logprob", "logprob_start_len": "logprob_start_len",
    "top_logprobs_num": "top_logprobs_num", "return_text_in_logprobs": "return_text_in_logprobs",
}
# Gen field -> client option (max_tokens: see resolve)
_TO_ENGINE = {
    "min_tokens": "min_new_tokens", "stop": "stop", "stop_token_ids": "stop_token_ids",
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty", "ignore_eos": "ignore_eos",
    "seed": "seed", "regex": "regex", "json_schema": "json_schema", "return_logprob": "logprobs",
    "top_logprobs_num": "top_logprobs", "logprob_start_len": "logprob_start_len",
}
_GEN_FIELDS = {f.name for f in fields(Gen)}


def run_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """Take the sampling keywords out of a run's keyword arguments (the rest are program arguments);
    returns {Gen field: default}."""
    n, stop_regex = options.pop("n", 1), options.pop("stop_regex", None)
    if n not in (None, 1):
        raise ValueError("run(n>1) is not supported; use s.fork(n) for several samples")
    if stop_regex:
        raise ValueError("run(stop_regex=...) is not supported; use stop strings or a regex constraint")
    picked = {RUN_DEFAULTS[k]: options.pop(k) for k in list(options) if k in RUN_DEFAULTS}
    return {k: v for k, v in picked.items() if v is not None and v != [] and v != ()}


def resolve(g: Gen, defaults: dict[str, Any]) -> tuple[dict[str, Any], LogprobAsk]:
    """The client options of gen `g` (its own values over the run's defaults) and its logprob ask."""
    value = {name: getattr(g, name) if getattr(g, name) is not None else defaults.get(name) for name in _GEN_FIELDS}
    opts = {_TO_ENGINE[k]: v for k, v in value.items() if k in _TO_ENGINE and v is not None}
    opts["max_new_tokens"] = max_new_tokens_of(value["max_tokens"])
    if value["top_k"] is not None and value["top_k"] < 0:
        opts["top_k"] = 0  # SGLang's -1: no top-k
    if g.dtype is not None:
        opts["regex"] = DTYPE_REGEX[g.dtype]
        stop = opts.get("stop") or []
        opts["stop"] = ([stop] if isinstance(stop, str) else list(stop)) + DTYPE_STOPS.get(g.dtype, [])
        if not opts["stop"]:
            del opts["stop"]
    start = value["logprob_start_len"]
    ask = LogprobAsk(bool(value["return_logprob"]), value["top_logprobs_num"] or 0,
                     start if value["return_logprob"] else None, bool(value["return_text_in_logprobs"]))
    if not ask.logprobs:
        for key in ("logprobs", "top_logprobs", "logprob_start_len"):
            opts.pop(key, None)
    return opts, ask
