"""The decode pass as a few fixed-shape functions: one decoder layer and the final norm + head.

A decode step is bandwidth-bound (every weight is read once per token) and, at batch 1, dominated by
per-op dispatch: ~200 small kernels per step. This module writes the step so that torch.compile can
fuse it: attention reads K/V gathered from the pool and puts the new token's own K/V in place with a
`where` (no pool writes inside the function, no data-dependent shapes), and the new K/V are written to
the pool after each layer, inside the same compiled call. One compiled block of `BLOCK_LAYERS` layers
serves every block (same shapes, weights are arguments), so compile time does not grow with depth; the
KV length is a dynamic dimension.

Weights of this pass are dense ([in, out], the decode dtype), int8 (`Int8Weight`: the plain-torch
dequantize + GEMM eagerly, a fused int8 GEMV when compiled) or 4-bit (`Q4Weight` layers and a
`Q8Weight` head, as a Q4_1 GGUF stores them: the native kernels where they build, else plain torch).
Where the native kernels build, float32 4-bit layers skip all of the above: each block of layers is one
call of the native op `radixlm::q4_decode_layers` (decode_layers.cpp) for the whole batch.

Exact blocks: float32 weights that are exactly 4-bit blocks (and a head exactly 8-bit blocks), as a
Q4_1 GGUF's dequantized weights are, decode from those blocks with `exact` kernels: x stays float32
and multiplies the blocks' own float32 weights, so the pass computes the float32 model's products
(in another summation order) while reading about a fifth of the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..kv_pool import KVPool
from ..quant import int8, q4, q8
from ..quant.native import block_kernels_available
from .config import ModelConfig
from .context import ForwardContext

QUANTIZATIONS = ("none", "int8", "q4")
# Largest decode batch run by this pass, per quantization; larger batches take the extend weights.
# A dense decode pass only exists for a decode dtype apart from the extend dtype (batch 1). Compiled,
# the pass runs a batch row by row (the compiled int8 reduction over a [rows, out, in] product loses
# its vectorization: 264 ms at batch 2); the limit is where that stops beating the dense batched
# matmuls (see bench/model_speed.py's batch rows). q4: 8 rows read each weight byte once in the native
# GEMVs; through the native decoder layers, more rows take one pass over the weights per 8 rows, which
# beats the dense extend weights up to NATIVE_LAYERS_BATCH rows (SmolLM2 on a 2-core AMD EPYC, dense bf16
# -> native q4: 9 rows 164 -> 523 tok/s, 16 rows 281 -> 546; with 3x longer prompts 32 rows 267 -> 381,
# 64 rows 331 -> 362).
BATCH_LIMITS = {"none": 1, "int8": 4, "q4": 8}
NATIVE_LAYERS_BATCH = 32

COMPILE_OPTIONS = {
    # Inductor inlines an elementwise producer into each consumer; inlined into a GEMV's reduction
    # loop, the RMSNorm or SiLU feeding it would be recomputed once per output row. A low opcount
    # threshold makes those small activation vectors materialize first (measured: 24.7 -> 12.8 ms per
    # SmolLM2 int8 step, 1 thread); the int8 -> float conversion (2 ops) stays fused into the reduction.
    "realize_cpu_opcount_threshold": 2,
    # The graph's host code in C++: the native block kernels (extern ops) are called without a Python
    # round trip. SmolLM2 decode, 2 threads (AMD EPYC): q4 115 -> 150 tok/s, int8 121-133 -> 125-138.
    "cpp_wrapper": True,
}

# Layers per compiled call. Each call costs a guard check and a graph prologue (~40 us); measured on
# SmolLM2 int8 decode, 2 threads (AMD EPYC): 1 layer per call 100 tok/s, 6 layers 112, all 30 in one
# graph 113 (but 50 s of compile instead of 20 at start).
BLOCK_LAYERS = 6


class InexactBlocks(ValueError):
    """A weight that its 4-/8-bit blocks do not give back exactly (exact blocks do not apply)."""


# (w [in, out],) dense; (q [out, in] int8, scale [out] float32) int8 per channel; (q [out, in] int8,
# d [out, in / 32] float16) 8-bit blocks (`Q8Weight`); (packed, d, m) 4-bit blocks (`Q4Weight`)
Matrix = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Kernels:
    """How this pass multiplies: `compiled` (the fused int8 GEMV, else dequantize + GEMM),
    `native_blocks` (the native block-quantized kernels, else plain torch) and `exact` (the native
    kernels' float32 products with the blocks' own weights, else x quantized per block)."""

    compiled: bool
    native_blocks: bool
    exact: bool = False

    def linear(self, x: torch.Tensor, w: Matrix) -> torch.Tensor:
        """x [rows, in] times a dense, int8, 8-bit block or 4-bit block matrix -> [rows, out]."""
        if len(w) == 1:
            return x @ w[0]
        if len(w) == 3:
            return q4.matmul_native(x, *w, exact=self.exact) if self.native_blocks else q4.matmul_dequant(x, *w)
        if w[1].dtype == torch.float16:
            return q8.matmul_native(x, *w, exact=self.exact) if self.native_blocks else q8.matmul_dequant(x, *w)
        return int8.matmul_reduce(x, *w) if self.compiled else int8.matmul_dequant(x, *w)


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


def make_layer_fn(s: LayerShape, kernels: Kernels) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One decoder layer for B new tokens over N gathered KV positions; returns (h, k, v)."""
    q_size, kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
    group = s.heads // s.kv_heads

    def layer(h, cos, sin, kv_index, valid, is_new, k_pool, v_pool,
              in_norm, post_norm, qkv, o, gate_up, down, qkv_bias, q_norm, k_norm):
        b = h.shape[0]
        x = F.rms_norm(h, (s.hidden,), in_norm, s.eps)
        qkv_out = kernels.linear(x, qkv)
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
        h = h + kernels.linear(attn, o)
        x = F.rms_norm(h, (s.hidden,), post_norm, s.eps)
        gate, up = kernels.linear(x, gate_up).chunk(2, dim=-1)
        return h + kernels.linear(F.silu(gate) * up, down), k, v

    return layer


def make_block_fn(layer: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Callable[..., torch.Tensor]:
    """Consecutive decoder layers in one call, each writing its new K/V to its pool layer. Pools
    and weights come stacked over the block's layers (`stack_layers`): a few arguments per call,
    whatever the depth, keep the compiled call's guard checks short."""

    def block(h, cos, sin, kv_index, valid, is_new, out_slots, k_layers, v_layers, stacked):
        for i in range(k_layers.shape[0]):
            w = [tuple(t[i] for t in v) if isinstance(v, tuple) else (None if v is None else v[i])
                 for v in stacked]
            h, k, v = layer(h, cos, sin, kv_index, valid, is_new, k_layers[i], v_layers[i], *w)
            # written through the stacked tensor itself: a write through the view k_layers[i] makes
            # the compiled graph copy the whole pool back
            at = (torch.full_like(out_slots, i), out_slots)
            k_layers.index_put_(at, k)
            v_layers.index_put_(at, v)
        return h

    return block


LAYER_WEIGHTS = ("in_norm", "post_norm", "qkv", "o", "gate_up", "down", "qkv_bias", "q_norm", "k_norm")


def stack_layers(layers: list[dict]) -> list:
    """The block's per-layer weights, in `LAYER_WEIGHTS` order, each stacked over the layers: a
    tensor [layers, ...], a tuple of them (a matrix's parts), or None (absent in this model)."""
    stacked: list = []
    for name in LAYER_WEIGHTS:
        parts = [layer[name] for layer in layers]
        if parts[0] is None:
            stacked.append(None)
        elif isinstance(parts[0], tuple):
            stacked.append(tuple(torch.stack(ts) for ts in zip(*parts)))
        else:
            stacked.append(torch.stack(parts))
    return stacked


def make_head_fn(s: LayerShape, kernels: Kernels) -> Callable[..., torch.Tensor]:
    def head(h, norm, lm_head):
        return kernels.linear(F.rms_norm(h, (s.hidden,), norm, s.eps), lm_head).float()

    return head


def native_layers_apply(cfg: ModelConfig, dtype: torch.dtype, kernels: Kernels) -> bool:
    """Whether the layers run as native decoder layers (decode_layers.cpp): 4-bit blocks through the
    native kernels, float32 activations and heads of a multiple of 8 values. Then a batch runs at once
    and nothing is left to compile."""
    return kernels.native_blocks and dtype == torch.float32 and cfg.head_dim % 8 == 0


def exact_blocks_apply(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a decode pass in `dtype` on `device` could decode from exact blocks: where the native
    layers would run it. Whether the weights are blocks is known only once they are split into them."""
    return device.type == "cpu" and native_layers_apply(cfg, dtype, Kernels(False, block_kernels_available(), True))


class DecodeStep:
    """Decode forward for batches of up to `max_batch` rows, in `dtype`, with dense, int8 or 4-bit weights,
    eager (plain torch, the whole batch at once), compiled (`torch.compile`: one batch-1 graph per
    block of layers and one for the head, which a batch runs row by row) or native (4-bit layers in
    float32: `radixlm::q4_decode_layers` per block of layers, the whole batch at once)."""

    def __init__(self, cfg: ModelConfig, dense: Callable[[str], torch.Tensor], dtype: torch.dtype,
                 quantization: str, compiled: bool, reuse: list[dict] | None = None,
                 reuse_head: torch.Tensor | None = None, exact: bool = False) -> None:
        """`dense(name)` returns a HF-named [out, in] weight in `dtype` on the model's device; `reuse`
        are the model's own per-layer dense matrices when this pass can share them: they are stacked
        per block here, and the model's entries are replaced by views of the stacks (one copy).
        `exact` (with "q4", where `exact_blocks_apply`): the weights must be exactly their blocks
        (`InexactBlocks` otherwise), and the pass multiplies by them in float32."""
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
        if exact and quantization != "q4":
            raise ValueError(f"exact blocks are 4-bit blocks, not {quantization!r}")
        self.dtype, self.quantization, self.exact = dtype, quantization, exact
        self.max_batch = BATCH_LIMITS[quantization]
        self.vocab_size = cfg.vocab_size

        def matrix(*names: str, fmt: str = quantization) -> Matrix:
            w = torch.cat([dense(n) for n in names])
            if fmt == "q4":
                qw = q4.Q4Weight.quantize(w)
                if exact and not torch.equal(qw.dequantize(), w):
                    raise InexactBlocks(f"{names[0]} is not exactly 4-bit blocks")
                return (qw.packed, qw.d, qw.m)
            if fmt == "q8":
                bw = q8.Q8Weight.quantize(w)
                if exact and not torch.equal(bw.dequantize(), w):
                    raise InexactBlocks(f"{names[0]} is not exactly 8-bit blocks")
                return (bw.q, bw.d)
            if fmt == "int8":
                iw = int8.Int8Weight.quantize(w)
                return (iw.q, iw.scale)
            return (w.t().contiguous(),)

        layers: list[dict] = []
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
            layers.append({
                "in_norm": dense(p + "input_layernorm.weight"),
                "post_norm": dense(p + "post_attention_layernorm.weight"),
                **mats,
                "qkv_bias": torch.cat([dense(attn + f"{n}_proj.bias") for n in "qkv"]) if cfg.qkv_bias else None,
                "q_norm": dense(attn + "q_norm.weight") if cfg.qk_norm else None,
                "k_norm": dense(attn + "k_norm.weight") if cfg.qk_norm else None,
            })
        head_name = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        head_format = "q8" if quantization == "q4" else quantization
        self.lm_head = (reuse_head,) if reuse_head is not None else matrix(head_name, fmt=head_format)
        self.norm = dense("model.norm.weight")
        self.shape = LayerShape(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps)
        kernels = Kernels(compiled, quantization == "q4" and block_kernels_available(), exact)
        self.native_layers = native_layers_apply(cfg, dtype, kernels)
        if self.native_layers:
            self.max_batch = NATIVE_LAYERS_BATCH
        self.compiled = compiled and not self.native_layers
        block_fn, head_fn = make_block_fn(make_layer_fn(self.shape, kernels)), make_head_fn(self.shape, kernels)
        if self.compiled:
            block_fn = torch.compile(block_fn, fullgraph=True, options=COMPILE_OPTIONS)
            head_fn = torch.compile(head_fn, fullgraph=True, options=COMPILE_OPTIONS)
        self._block, self._head = block_fn, head_fn
        # (first layer, end layer, the block's stacked weights)
        self.blocks: list[tuple[int, int, list]] = []
        for a in range(0, cfg.num_layers, BLOCK_LAYERS):
            b = min(a + BLOCK_LAYERS, cfg.num_layers)
            stacked = stack_layers(layers[a:b])
            self.blocks.append((a, b, stacked))
            if reuse is not None:
                for name in ("qkv", "o", "gate_up", "down"):
                    (matrices,) = stacked[LAYER_WEIGHTS.index(name)]
                    for i in range(a, b):
                        reuse[i][name] = matrices[i - a]

    def matrix(self, layer: int, name: str) -> Matrix:
        """Layer `layer`'s matrix `name` ("qkv", "o", "gate_up" or "down") as this pass stores it."""
        for a, b, stacked in self.blocks:
            if a <= layer < b:
                return tuple(t[layer - a] for t in stacked[LAYER_WEIGHTS.index(name)])
        raise IndexError(f"layer {layer} out of range")

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (layer matrices, norms and the head)."""
        tensors = [t for _, _, stacked in self.blocks for v in stacked if v is not None
                   for t in (v if isinstance(v, tuple) else (v,))]
        return sum(t.numel() * t.element_size() for t in [*tensors, *self.lm_head, self.norm])

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """h: [B, hidden] embeddings in this pass's dtype; cos/sin [B, 1, dim]. Writes the new K/V to
        the pool and returns float32 logits for `ctx.logit_rows`."""
        kv_index, kv_lens = ctx.kv_index, ctx.kv_lens.to(ctx.kv_index.device)
        if self.native_layers:
            return self._head_rows(self._native_layers(h, cos, sin, kv_index, kv_lens, ctx.pool)[ctx.logit_rows])
        cols = torch.arange(kv_index.shape[1], device=kv_index.device)
        valid = cols[None, :] < kv_lens[:, None]
        is_new = cols[None, :] == (kv_lens - 1)[:, None]
        pool = ctx.pool
        # Compiled, a batch runs row by row through the one batch-1 graph, block by block: a block's
        # weights come from memory for the first row and from the cache for the others.
        rows = [slice(r, r + 1) for r in range(h.shape[0])] if self.compiled else [slice(None)]
        args = [(kv_index[r], valid[r], is_new[r], ctx.out_slots[r]) for r in rows]
        if self.compiled:
            for t in (t for a in args for t in a[:3]):
                torch._dynamo.mark_dynamic(t, 1)
        h = [h[r] for r in rows]
        for a, b, stacked in self.blocks:
            h = [self._block(x, cos[r], sin[r], *row_args, pool.k_layers[a:b], pool.v_layers[a:b], stacked)
                 for x, r, row_args in zip(h, rows, args)]
        return self._head_rows(torch.cat(h)[ctx.logit_rows])

    def _native_layers(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_index: torch.Tensor,
                       kv_lens: torch.Tensor, pool: KVPool) -> torch.Tensor:
        """All layers through `radixlm::q4_decode_layers`, one call per block of layers; writes K/V."""
        s, rows = self.shape, h.shape[0]
        cos, sin = cos.reshape(rows, -1).float().contiguous(), sin.reshape(rows, -1).float().contiguous()
        kv_index, kv_lens = kv_index.contiguous(), kv_lens.contiguous()
        h = h.float()
        for a, b, stacked in self.blocks:
            in_norm, post_norm, qkv, o, gate_up, down, qkv_bias, q_norm, k_norm = stacked
            h = torch.ops.radixlm.q4_decode_layers(
                h, cos, sin, kv_index, kv_lens, pool.k_layers[a:b], pool.v_layers[a:b], in_norm, post_norm,
                list(qkv), list(o), list(gate_up), list(down), qkv_bias, q_norm, k_norm, s.heads, s.kv_heads, s.eps,
                self.exact)
        return h

    def _head_rows(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits of the final hidden rows `h`."""
        if not self.compiled:
            return self._head(h, self.norm, self.lm_head)
        logits = [self._head(h[i: i + 1], self.norm, self.lm_head) for i in range(h.shape[0])]
        # zero logit rows (a pass of ghosts only): no head pass, and no graph compiled for zero rows
        return torch.cat(logits) if logits else h.new_empty((0, self.vocab_size), dtype=torch.float32)
