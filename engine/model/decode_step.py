"""The decode pass as a few fixed-shape functions: one decoder layer and the final norm + head.

A decode step is bandwidth-bound (every weight is read once per token) and, at batch 1, dominated by
per-op dispatch: ~200 small kernels per step. This module writes the step so that torch.compile can
fuse it: attention reads K/V gathered from the pool and puts the new token's own K/V in place with a
`where` (no pool writes inside the function, no data-dependent shapes), and the new K/V are written to
the pool after each layer, inside the same compiled call. One compiled block of `BLOCK_LAYERS` layers
serves every block (same shapes, weights are arguments), so compile time does not grow with depth; the
KV length is a dynamic dimension.

Weights of this pass are either dense ([in, out], the decode dtype) or int8 (`Int8Weight`), whose
matmul is the plain-torch dequantize + GEMM eagerly and a fused int8 GEMV when compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..quant.int8 import Int8Weight, matmul_dequant, matmul_reduce
from .config import ModelConfig
from .context import ForwardContext

QUANTIZATIONS = ("none", "int8")
# Largest decode batch run by this pass, per quantization; larger batches take the extend weights.
# A dense decode pass only exists for a decode dtype apart from the extend dtype (batch 1). Compiled,
# the int8 pass runs a batch row by row (the compiled reduction over a [rows, out, in] product loses
# its vectorization: 264 ms at batch 2); BATCH_LIMIT_INT8 is where that stops beating the dense
# batched matmuls (see bench/model_speed.py's batch rows).
BATCH_LIMIT_INT8 = 4

# Inductor inlines an elementwise producer into each consumer; inlined into a GEMV's reduction loop,
# the RMSNorm or SiLU feeding it would be recomputed once per output row. A low opcount threshold
# makes those small activation vectors materialize first (measured: 24.7 -> 12.8 ms per SmolLM2
# int8 step, 1 thread); the int8 -> float conversion (2 ops) stays fused into the reduction.
COMPILE_OPTIONS = {"realize_cpu_opcount_threshold": 2}

# Layers per compiled call. Each call costs a guard check and a graph prologue (~40 us); measured on
# SmolLM2 int8 decode, 2 threads (AMD EPYC): 1 layer per call 100 tok/s, 6 layers 112, all 30 in one
# graph 113 (but 50 s of compile instead of 20 at start).
BLOCK_LAYERS = 6

Matrix = tuple[torch.Tensor, ...]  # (w [in, out],) dense, or (q [out, in] int8, scale [out])


def linear(x: torch.Tensor, w: Matrix, fused: bool) -> torch.Tensor:
    """x [rows, in] times a dense or int8 matrix -> [rows, out]."""
    if len(w) == 1:
        return x @ w[0]
    return matmul_reduce(x, *w) if fused else matmul_dequant(x, *w)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half layout; x [..., dim], cos/sin broadcastable to it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


@dataclass(frozen=True)
class LayerShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float


def make_layer_fn(s: LayerShape, fused: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One decoder layer for B new tokens over N gathered KV positions; returns (h, k, v)."""
    q_size, kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
    group = s.heads // s.kv_heads

    def layer(h, cos, sin, kv_index, valid, is_new, k_pool, v_pool,
              in_norm, post_norm, qkv, o, gate_up, down, qkv_bias, q_norm, k_norm):
        b = h.shape[0]
        x = F.rms_norm(h, (s.hidden,), in_norm, s.eps)
        qkv_out = linear(x, qkv, fused)
        if qkv_bias is not None:
            qkv_out = qkv_out + qkv_bias
        q, k, v = qkv_out.split([q_size, kv_size, kv_size], dim=-1)
        q, k, v = q.view(b, s.heads, s.head_dim), k.view(b, s.kv_heads, s.head_dim), v.view(b, s.kv_heads, s.head_dim)
        if q_norm is not None:
            q = F.rms_norm(q, (s.head_dim,), q_norm, s.eps)
            k = F.rms_norm(k, (s.head_dim,), k_norm, s.eps)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        new = is_new[:, :, None, None]
        keys = torch.where(new, k[:, None], k_pool[kv_index])  # [B, N, kv_heads, dim]
        values = torch.where(new, v[:, None], v_pool[kv_index])
        qg = q.view(b, s.kv_heads, group, s.head_dim)
        scores = torch.einsum("bkgd,bnkd->bkgn", qg, keys) * s.head_dim**-0.5
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        attn = torch.einsum("bkgn,bnkd->bkgd", scores.softmax(dim=-1), values).reshape(b, q_size)
        h = h + linear(attn, o, fused)
        x = F.rms_norm(h, (s.hidden,), post_norm, s.eps)
        gate, up = linear(x, gate_up, fused).chunk(2, dim=-1)
        return h + linear(F.silu(gate) * up, down, fused), k, v

    return layer


def make_block_fn(layer: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Callable[..., torch.Tensor]:
    """Consecutive decoder layers in one call, each writing its new K/V to its pool tensors."""

    def block(h, cos, sin, kv_index, valid, is_new, out_slots, k_pools, v_pools, weights):
        for k_pool, v_pool, w in zip(k_pools, v_pools, weights):
            h, k, v = layer(h, cos, sin, kv_index, valid, is_new, k_pool, v_pool, *w)
            k_pool.index_put_((out_slots,), k)
            v_pool.index_put_((out_slots,), v)
        return h

    return block


def make_head_fn(s: LayerShape, fused: bool) -> Callable[..., torch.Tensor]:
    def head(h, norm, lm_head):
        return linear(F.rms_norm(h, (s.hidden,), norm, s.eps), lm_head, fused).float()

    return head


class DecodeStep:
    """Decode forward for batches of up to `max_batch` rows, in `dtype`, with dense or int8 weights,
    eager (plain torch, the whole batch at once) or compiled (`torch.compile`: one batch-1 graph per
    block of layers and one for the head, which a batch runs row by row)."""

    def __init__(self, cfg: ModelConfig, dense: Callable[[str], torch.Tensor], dtype: torch.dtype,
                 quantization: str, compiled: bool, reuse: list[dict] | None = None,
                 reuse_head: torch.Tensor | None = None) -> None:
        """`dense(name)` returns a HF-named [out, in] weight in `dtype` on the model's device; `reuse`
        are the model's own per-layer dense matrices when this pass can share them."""
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
        self.dtype, self.quantization, self.compiled = dtype, quantization, compiled
        self.max_batch = BATCH_LIMIT_INT8 if quantization == "int8" else 1
        self.vocab_size = cfg.vocab_size

        def matrix(*names: str) -> Matrix:
            w = torch.cat([dense(n) for n in names])
            if quantization == "int8":
                qw = Int8Weight.quantize(w)
                return (qw.q, qw.scale)
            return (w.t().contiguous(),)

        self.layers: list[dict] = []
        for i in range(cfg.num_layers):
            p, attn = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
            if reuse is not None:
                mats = {k: (reuse[i][k],) for k in ("qkv", "o", "gate_up", "down")}
            else:
                mats = {
                    "qkv": matrix(*(attn + f"{n}_proj.weight" for n in "qkv")),
                    "o": matrix(attn + "o_proj.weight"),
                    "gate_up": matrix(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                    "down": matrix(p + "mlp.down_proj.weight"),
                }
            self.layers.append({
                "in_norm": dense(p + "input_layernorm.weight"),
                "post_norm": dense(p + "post_attention_layernorm.weight"),
                **mats,
                "qkv_bias": torch.cat([dense(attn + f"{n}_proj.bias") for n in "qkv"]) if cfg.qkv_bias else None,
                "q_norm": dense(attn + "q_norm.weight") if cfg.qk_norm else None,
                "k_norm": dense(attn + "k_norm.weight") if cfg.qk_norm else None,
            })
        head_name = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        self.lm_head = (reuse_head,) if reuse_head is not None else matrix(head_name)
        self.norm = dense("model.norm.weight")
        shape = LayerShape(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps)
        block_fn, head_fn = make_block_fn(make_layer_fn(shape, compiled)), make_head_fn(shape, compiled)
        if compiled:
            block_fn = torch.compile(block_fn, fullgraph=True, options=COMPILE_OPTIONS)
            head_fn = torch.compile(head_fn, fullgraph=True, options=COMPILE_OPTIONS)
        self._block, self._head = block_fn, head_fn
        self._args = [(w["in_norm"], w["post_norm"], w["qkv"], w["o"], w["gate_up"], w["down"],
                       w["qkv_bias"], w["q_norm"], w["k_norm"]) for w in self.layers]

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (layer matrices, norms and the head)."""
        tensors = [t for layer in self.layers for v in layer.values() if v is not None
                   for t in (v if isinstance(v, tuple) else (v,))]
        return sum(t.numel() * t.element_size() for t in [*tensors, *self.lm_head, self.norm])

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """h: [B, hidden] embeddings in this pass's dtype; cos/sin [B, 1, dim]. Writes the new K/V to
        the pool and returns float32 logits for `ctx.logit_rows`."""
        kv_index, kv_lens = ctx.kv_index, ctx.kv_lens.to(ctx.kv_index.device)
        cols = torch.arange(kv_index.shape[1], device=kv_index.device)
        valid = cols[None, :] < kv_lens[:, None]
        is_new = cols[None, :] == (kv_lens - 1)[:, None]
        pool, n = ctx.pool, len(self.layers)
        # Compiled, a batch runs row by row through the one batch-1 graph, block by block: a block's
        # weights come from memory for the first row and from the cache for the others.
        rows = [slice(r, r + 1) for r in range(h.shape[0])] if self.compiled else [slice(None)]
        args = [(kv_index[r], valid[r], is_new[r], ctx.out_slots[r]) for r in rows]
        if self.compiled:
            for t in (t for a in args for t in a[:3]):
                torch._dynamo.mark_dynamic(t, 1)
        h = [h[r] for r in rows]
        for a in range(0, n, BLOCK_LAYERS):
            b = min(a + BLOCK_LAYERS, n)
            h = [self._block(x, cos[r], sin[r], *row_args, pool.k[a:b], pool.v[a:b], self._args[a:b])
                 for x, r, row_args in zip(h, rows, args)]
        h = torch.cat(h)[ctx.logit_rows]
        if not self.compiled:
            return self._head(h, self.norm, self.lm_head)
        logits = [self._head(h[i: i + 1], self.norm, self.lm_head) for i in range(h.shape[0])]
        # zero logit rows (a pass of ghosts only): no head pass, and no graph compiled for zero rows
        return torch.cat(logits) if logits else h.new_empty((0, self.vocab_size), dtype=torch.float32)
