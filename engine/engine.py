"""The in-process Engine: add requests, step, collect results. The ZeroMQ server and the benches
drive it; one step is one scheduled forward pass (extend or decode) over the paged KV pool."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Iterable, Sequence

import torch

from radixlm.protocol import SamplingParams

from .attention.select import BACKENDS, make_attention
from .batch_input import BatchInput, prepare_batch
from .containment import forward_isolating, recover, sample_isolating
from .decoding import Decoding, blocked_tokens_mask
from .detokenizer import Detokenizer
from .grammar import GrammarBackend, fill_allowed
from .kv_manager import KVManager
from .kv_pool import KVPool, ReqToTokenPool
from .loader import LoadedModel, load_model
from .model.context import ForwardMode, use_context
from .model.decode_step import QUANTIZATIONS
from .model.llama import LlamaModel
from .model.precision import DTYPE_CHOICES
from .policy import POLICIES, trace_rank
from .prefix_cache import PrefixCache
from .radix_cache import IntegrityError, NoRadixCache, RadixCache
from .request import FinishReason, GenerationResult, Request, describe
from .sampler import SampleOutput, sample
from .scheduler import Batch, Scheduler
from .stats import EngineStats
from .tokenizer import Tokenizer
from .validation import Limits, check_params, check_prompt
from .trace_retention import TraceRetention, pinned_share
from .traces import TraceTable


log = logging.getLogger("radixlm.engine")


def _option(default, help: str, choices=None):  # noqa: A002 - `help` as argparse names it
    """A config field with the help text (and choices) that its `radixlm serve` flag shows."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


@dataclass(frozen=True)
class EngineConfig:
    """User-facing engine options: the single source of the `radixlm serve` flags and of
    `radixlm.connect(**engine_options)` (see radixlm.config_flags). `dtype`, `device`, `quantization`,
    `compile_decode` and `exact_blocks` shape the model, so `Engine.from_model` applies them; `Engine(model, config)`
    runs the model as it was built."""

    kv_cache_tokens: int = _option(32768, "KV pool size in tokens")
    max_running_requests: int = _option(128, "most requests decoding at once")
    chunk_size: int = _option(1024, "most prompt tokens per extend pass")
    policy: str = _option("lpm", "order of the waiting queue", POLICIES)
    radix_cache: bool = _option(True, "reuse cached prefixes (--no-radix-cache: the cache-off ablation)")
    max_context: int | None = _option(None, "longest prompt + output (default: the model's)")
    reserve_clip: int = _option(256, "output tokens reserved per running request at admission, at most")
    dedup_min_shared: int = _option(32, "shared uncached tokens that make a sibling wait a round to reuse them")
    dtype: str = _option("float32", "weights and KV precision (bfloat16: about 3x faster prefill and batched "
                         "decode on CPU; auto: bf16 extend where the CPU has bf16 matmul, fp32 decode)", DTYPE_CHOICES)
    jump_forward: bool = _option(True, "compute grammar-forced tokens in one pass "
                                 "(--no-jump-forward: decode them one by one)")
    attention_backend: str = _option("auto", "attention kernels (auto: torch on CPU, triton on CUDA)", BACKENDS)
    device: str = _option("cpu", "where the model, KV pool and sampler tensors live (cpu, cuda or cuda:N)")
    quantization: str = _option("none", "decode weights: none; int8 weight-only (per-channel scales); q4 "
                                "(4-bit blocks of 32 with a scale and an offset, GGUF's Q4_1: a Q4_1 GGUF keeps "
                                "its own weights; the head in 8-bit blocks, GGUF's Q8_0)", QUANTIZATIONS)
    compile_decode: bool = _option(False, "torch.compile the batch-1 decode pass (costs compile time at start)")
    exact_blocks: bool = _option(True, "decode float32 weights that are exactly 4-bit blocks (a Q4_1 GGUF's, with "
                                 "an 8-bit-block head) from those blocks, in float32 math: the same products, about "
                                 "a fifth of the bytes per token (--no-exact-blocks: from the dense weights)")
    trace_retention: bool = _option(True, "keep an agent trace's newest path pinned while it runs a tool "
                                    "(--no-trace-retention: plain LRU)")
    trace_ttl_s: float = _option(30.0, "a pin not resumed, ended or needed within this many seconds goes")
    max_pinned_share: float | None = _option(None, "most of the KV pool that trace pins may hold (default 0.5; "
                                             "1.0 under the program policy, whose program admission bounds it)")

    def validate(self) -> None:
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {self.quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; choose cpu or cuda (cuda:N for one GPU)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device cuda asked for, but torch sees no CUDA device")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention_backend!r}; "
                             f"choose one of {', '.join(BACKENDS)}")
        for name in ("kv_cache_tokens", "max_running_requests", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.trace_ttl_s > 0:
            raise ValueError(f"trace_ttl_s must be > 0, got {self.trace_ttl_s}")
        if self.max_pinned_share is not None and not 0.0 <= self.max_pinned_share <= 1.0:
            raise ValueError(f"max_pinned_share must be in [0, 1], got {self.max_pinned_share}")


class Engine:
    """Continuous-batching engine over one model, one KV pool and one prefix cache. A step is a short
    loop over named parts: the scheduler picks a batch, `batch_input` prepares the pass, the model
    (through its attention backend) computes logits, the sampler picks tokens, `Decoding` appends
    them and decides who stops, and the detokenizer gives the finished requests' text; containment
    pins a failure on the requests it belongs to."""

    def __init__(
        self,
        model: LlamaModel,
        config: EngineConfig = EngineConfig(),
        eos_token_ids: Iterable[int] = (),
        tokenizer: Tokenizer | None = None,
    ) -> None:
        config.validate()
        if config.attention_backend != "auto":  # "auto" keeps the backend the model was built with
            model.attention = make_attention(config.attention_backend, model.device)
        self.model, self.config, self.tokenizer = model, config, tokenizer
        mcfg = model.cfg
        max_context = min(config.max_context or mcfg.max_position_embeddings, mcfg.max_position_embeddings)
        pool = KVPool(config.kv_cache_tokens + 1, mcfg.num_layers, mcfg.num_kv_heads, mcfg.head_dim,
                      dtype=model.dtype, device=model.device)
        rows = ReqToTokenPool(config.max_running_requests + 2, max_context + 1, device=model.device)
        self.detokenizer = Detokenizer(tokenizer)
        self.decoding = Decoding(frozenset(eos_token_ids), min(max_context, pool.allocator.capacity),
                                 config.jump_forward, self.detokenizer)
        self.stats = EngineStats()
        self.traces = TraceTable(lambda: self.stats.traces)
        self.build_bookkeeping(pool, rows)
        self._grammars: GrammarBackend | None = None
        self.max_context = max_context
        self.limits = Limits(mcfg.vocab_size, max_context, pool.allocator.capacity)

    def build_bookkeeping(self, pool: KVPool, rows: ReqToTokenPool) -> None:
        """(Re)build what owns the KV slots over `pool`: an empty cache of the configured kind, the KV
        manager with its trace pins (when `trace_retention` is on and the cache is real), and the
        scheduler. `recover` calls it again after a step that no request can be blamed for."""
        cache: PrefixCache = RadixCache(pool.allocator) if self.config.radix_cache else NoRadixCache(pool.allocator)
        self.kv = KVManager(pool, rows, cache)
        if self.config.trace_retention and self.config.radix_cache:
            rank = partial(trace_rank, traces=self.traces) if self.config.policy == "program" else None
            self.kv.retention = TraceRetention(cache, self.traces, pool.allocator.capacity,
                                               self.config.trace_ttl_s,
                                               pinned_share(self.config.max_pinned_share, self.config.policy), rank=rank)
        self.scheduler = Scheduler(self.kv, self.config, self.decoding, self.traces)
        self.in_flight: Batch | None = None  # the pass being run, for `recover`

    @classmethod
    def from_model(cls, name: str, config: EngineConfig = EngineConfig()) -> "Engine":
        """Load a model by alias or path and build an engine on it."""
        config.validate()
        loaded: LoadedModel = load_model(name, device=config.device, dtype=config.dtype,
                                         quantization=config.quantization, compile_decode=config.compile_decode,
                                         exact_blocks=config.exact_blocks)
        return cls(loaded.model, config, loaded.eos_token_ids, loaded.tokenizer)

    def prompt_ids(self, text: str | None = None, input_ids: Sequence[int] | None = None,
                   messages: list[dict] | None = None) -> list[int]:
        """Token ids of exactly one of: plain text, ids, or chat messages (rendered with the model's template)."""
        given = [x is not None for x in (text, input_ids, messages)]
        if sum(given) != 1:
            raise ValueError("give exactly one of text, input_ids or messages")
        if input_ids is not None:
            return list(input_ids)
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer; send input_ids")
        if messages is not None:
            try:
                text = self.tokenizer.apply_chat_template(messages)
            except Exception as exc:  # the template's own errors (missing keys, wrong types) are bad input
                raise ValueError(f"the chat messages cannot be rendered with the model's template: {describe(exc)}") from exc
        return self.tokenizer.encode(text)

    def info(self) -> dict:
        """What a client may want to know about the model and the engine's configuration."""
        c = self.model.cfg
        return {
            "model_type": getattr(c, "model_type", type(self.model).__name__),
            "vocab_size": c.vocab_size,
            "num_layers": c.num_layers,
            "max_context": self.max_context,
            "kv_cache_tokens": self.config.kv_cache_tokens,
            "policy": self.config.policy,
            "radix_cache": self.config.radix_cache,
            "chunk_size": self.config.chunk_size,
            "max_running_requests": self.config.max_running_requests,
            "eos_token_ids": sorted(self.decoding.eos),
            "jump_forward": self.config.jump_forward,
            "config": asdict(self.config),
        }

    def add_request(self, prompt_ids: Sequence[int], params: SamplingParams = SamplingParams(),
                    rid: str | None = None, prefix_only: bool = False, trace_id: str | None = None) -> Request:
        """Queue a request; raises ValueError naming the problem for invalid input. A `prefix_only`
        request computes and caches its prompt and finishes without generating."""
        ids = [int(t) for t in prompt_ids]
        check_prompt(ids, self.limits)
        check_params(params, self.limits)
        req = Request(ids, params, prefix_only=prefix_only, trace_id=trace_id)
        if params.constraint is not None:
            req.grammar = self.grammars().new_state(params.constraint)
        if params.seed is not None:
            req.generator = torch.Generator(self.model.device).manual_seed(params.seed)
        if rid is not None:
            req.rid = rid
        self.scheduler.add(req)
        self.traces.on_arrival(req)
        return req

    def end_trace(self, trace_id: str) -> dict:
        """The agent of `trace_id` is done: release its pin and close its trace (its counters stay
        in `stats_dict()["traces"]`). Ending an unknown or already ended trace changes nothing."""
        if not isinstance(trace_id, str) or not trace_id:
            raise ValueError("trace_id must be a non-empty string")
        released = self.kv.retention.drop(trace_id, "end_trace") if self.kv.retention is not None else False
        return {"trace_id": trace_id, "ended": self.traces.end(trace_id), "released_pin": released}

    def grammars(self) -> GrammarBackend:
        """The model's grammar compiler (built on first use: it indexes the whole vocabulary)."""
        if self._grammars is None:
            if self.tokenizer is None:
                raise ValueError("grammar-constrained decoding needs a tokenizer")
            self._grammars = GrammarBackend(self.tokenizer.hf, self.model.cfg.vocab_size)
        return self._grammars

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def abort(self, rid: str) -> GenerationResult | None:
        req = self.scheduler.abort(rid)
        return self._result(req) if req else None

    def step(self, allow_ghost_only: bool = True) -> list[GenerationResult]:
        """Run one scheduled forward pass; return the requests that finished (or failed) in it. With
        `allow_ghost_only` false, a pass that would only write finished requests' last-token KV is
        deferred so that it rides along with the next request's pass.

        A failure is pinned on the requests it belongs to (see containment.py). One that no request
        can be blamed for (an engine bug) fails every request and the engine `recover`s and serves on."""
        try:
            return self._step(allow_ghost_only)
        except Exception as exc:  # noqa: BLE001 - logged, reported to every request, state rebuilt
            log.exception("engine step failed and no request could be blamed; failing all and recovering")
            return recover(self, f"engine error (not caused by this request): {describe(exc)}")

    def _step(self, allow_ghost_only: bool) -> list[GenerationResult]:
        self.in_flight = None
        if self.kv.retention is not None:
            self.kv.retention.expire()
        batch = self.scheduler.next_batch(allow_ghost_only)
        self.in_flight = batch
        if batch is None:
            if self.has_work() and (allow_ghost_only or not self.scheduler.only_ghosts_pending()):
                raise RuntimeError("scheduler stalled: work is queued but nothing can be scheduled")
            return []
        start = time.perf_counter()
        failed: list[Request] = []
        ran = forward_isolating(self, batch, failed)
        if ran is None:
            return [self._result(r) for r in failed]
        batch, (logits, inp) = ran
        inp.record_prompt_logprobs(logits)
        batch, out = sample_isolating(self, batch, logits[inp.sample_rows], failed)
        now = time.perf_counter()
        for req in batch.sampling:
            if req.first_token_time is None:
                req.first_token_time = now
        finished = self.scheduler.finish_step(batch, out.tokens, out.logprobs, out.top_logprobs)
        self.stats.record_pass(batch.mode is ForwardMode.EXTEND, batch.computed_tokens, len(out.tokens), now - start)
        self.stats.evicted_tokens, self.stats.retractions = self.kv.evicted_tokens, self.scheduler.retractions
        self.stats.calls_run_ahead = self.scheduler.calls_run_ahead
        return [self._result(r) for r in failed + finished]

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, BatchInput]:
        """Run the batch's forward pass: its logits, and the input that says whose each row is."""
        inp = prepare_batch(batch, self.kv.table, self.kv.pool)
        with use_context(inp.ctx):
            return self.model(inp.ids, inp.positions), inp

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> SampleOutput:
        states = [r.grammar for r in reqs]
        vocab = self.model.cfg.vocab_size
        grammar_mask = fill_allowed(states, vocab) if any(s is not None for s in states) else None
        allowed = blocked_tokens_mask(reqs, self.decoding.eos, vocab, grammar_mask)
        penalized = any(r.params.repetition_penalty != 1.0 for r in reqs)
        return sample(
            logits,
            [r.params for r in reqs],
            [r.generator for r in reqs],
            prompt_ids=[r.prompt_ids for r in reqs] if penalized else None,
            output_ids=[r.output_ids for r in reqs],
            allowed=allowed,
            top_logprobs=[r.params.top_logprobs for r in reqs],
            logprobs=any(r.params.wants_logprobs for r in reqs),
        )

    def _result(self, req: Request) -> GenerationResult:
        self.stats.record_finished(req.trace_id, len(req.prompt_ids), req.cached_tokens or 0, len(req.output_ids))
        self.traces.on_finish(req)
        try:
            text = self.detokenizer.final_text(req)
        except Exception as exc:  # noqa: BLE001 - this request's output cannot be reported; the others can
            req.finish_reason, req.error = FinishReason.ERROR, f"detokenizing the output failed: {describe(exc)}"
            return req.result(None)
        return req.result(text)

    def run(self) -> list[GenerationResult]:
        """Step until every queued request finished; results in finishing order."""
        done: list[GenerationResult] = []
        while self.has_work():
            done.extend(self.step())
        return done

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams()) -> list[GenerationResult]:
        """Run a list of prompts to completion together; results in prompt order."""
        return self.generate_each([(p, params) for p in prompts])

    def generate_each(self, jobs: Sequence[tuple[Sequence[int], SamplingParams]]) -> list[GenerationResult]:
        """Run (prompt ids, params) pairs to completion together; results in job order."""
        reqs = [self.add_request(ids, params) for ids, params in jobs]
        by_rid = {r.rid: r for r in self.run()}
        return [by_rid[r.rid] for r in reqs]

    def stats_dict(self) -> dict:
        """Counters plus pool use and queue lengths right now."""
        cache = self.kv.cache
        retention = self.kv.retention
        pins = {}
        if retention is not None:
            retention.expire()
            pins = retention.gauges()
        return self.stats.as_dict(
            **pins,
            pool_capacity=self.kv.pool.allocator.capacity,
            pool_free=self.kv.pool.allocator.available,
            cache_evictable=cache.evictable_size,
            cache_protected=cache.protected_size,
            waiting=len(self.scheduler.waiting),
            running=len(self.scheduler.running),
        )

    def check_integrity(self) -> None:
        """Raise IntegrityError if any KV slot, lock or request row is owned twice or lost, a request's
        prefix is not its tree path, a waiting request holds anything, or the tree is inconsistent."""
        for req in self.scheduler.waiting:
            if req.row is not None or req.prefix_node is not None:
                raise IntegrityError(f"waiting request {req.rid} holds a row or a lock")
        self.kv.check_integrity(self.scheduler.live())

    def flush_cache(self) -> None:
        """Drop every cached prefix (only when idle; pending last-token passes are dropped too)."""
        if self.scheduler.only_ghosts_pending():
            self.scheduler.drop_ghost_passes()
        if self.has_work():
            raise ValueError("cannot flush the cache while requests are running")
        if self.kv.retention is not None:
            self.kv.retention.release_all()
        self.kv.cache.reset()
