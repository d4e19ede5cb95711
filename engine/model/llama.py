"""The one Llama-family model: RMSNorm, RoPE (incl. llama3 scaling), GQA, SwiGLU, tied embeddings,
Qwen2 q/k/v bias and Qwen3 q/k norm as config switches.

Weights are plain tensors taken from a HF-named state dict, stored transposed ([in, out]: MKL streams
that layout faster for small batches); q/k/v and gate/up projections are fused into one matmul each. `forward(ids, positions)` computes new tokens' hidden states, writes their K/V
into the pool through the attention backend, and returns logits for the context's `logit_rows`.

Extend passes and decode passes may run in different formats (`Precision`, `quantization`): decode
batches of up to `DecodeStep.max_batch` rows then go through `DecodeStep` (its own weights: int8, 4-bit or
another dtype, eager or compiled); the KV pool is in the decode dtype.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping

import torch
import torch.nn.functional as F

from ..attention.backend import AttentionBackend
from .config import ModelConfig
from .context import ForwardMode, current_context
from .decode_step import DecodeStep, InexactBlocks, exact_blocks_apply, rotate
from .precision import Precision

log = logging.getLogger("radixlm.engine")


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """RoPE inverse frequencies, with llama3 low/high-frequency scaling when configured."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class Rotary:
    """cos/sin tables indexed by absolute position; applied in the rotate-half layout."""

    def __init__(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
        positions = torch.arange(cfg.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(positions, rope_inv_freq(cfg))
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(device=device, dtype=dtype)
        self.sin = emb.sin().to(device=device, dtype=dtype)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return rotate(x, cos, sin)


class LlamaModel:
    """Forward over the KV pool; see the module docstring."""

    def __init__(
        self,
        cfg: ModelConfig,
        weights: Mapping[str, torch.Tensor],
        attention: AttentionBackend,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | Precision = torch.float32,
        quantization: str = "none",
        compile_decode: bool = False,
        exact_blocks: bool = True,
    ) -> None:
        """`dtype`: one dtype for every pass, or a `Precision` (extend and decode dtypes);
        `quantization`: "none", "int8" or "q4" (decode weights); `compile_decode`: torch.compile the decode pass;
        `exact_blocks`: with no quantization and float32 decode, decode from the weights' 4-/8-bit
        blocks where the weights are exactly those blocks (`decode_step`'s exact blocks)."""
        precision = dtype if isinstance(dtype, Precision) else Precision(dtype, dtype)
        self.cfg, self.attention = cfg, attention
        # dtype: the decode pass's and the KV pool's; extend_dtype: the extend pass's weights and activations
        self.device, self.dtype, self.extend_dtype = torch.device(device), precision.decode, precision.extend
        self.quantization, self.compile_decode = quantization, compile_decode

        def w(name: str, dtype: torch.dtype = precision.extend) -> torch.Tensor:
            if name not in weights:
                raise KeyError(f"checkpoint is missing weight {name!r}")
            return weights[name].to(device=self.device, dtype=dtype)

        def wt(*names: str) -> torch.Tensor:
            return torch.cat([w(n) for n in names]).t().contiguous()

        self.embed = w("model.embed_tokens.weight", precision.decode)
        self.lm_head = wt("model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight")
        self.norm = w("model.norm.weight")
        self.layers = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            attn = p + "self_attn."
            layer = {
                "in_norm": w(p + "input_layernorm.weight"),
                "post_norm": w(p + "post_attention_layernorm.weight"),
                "qkv": wt(*(attn + f"{n}_proj.weight" for n in "qkv")),
                "o": wt(attn + "o_proj.weight"),
                "gate_up": wt(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                "down": wt(p + "mlp.down_proj.weight"),
                "qkv_bias": torch.cat([w(attn + f"{n}_proj.bias") for n in "qkv"]) if cfg.qkv_bias else None,
                "q_norm": w(attn + "q_norm.weight") if cfg.qk_norm else None,
                "k_norm": w(attn + "k_norm.weight") if cfg.qk_norm else None,
            }
            self.layers.append(layer)
        self.rotary = Rotary(cfg, self.device, precision.extend)
        self.decode_step: DecodeStep | None = None
        if quantization == "none" and exact_blocks and exact_blocks_apply(cfg, precision.decode, self.device):
            try:
                self.decode_step = DecodeStep(cfg, lambda name: w(name, precision.decode), precision.decode, "q4",
                                              False, exact=True)
            except InexactBlocks as exc:
                log.info("decoding from the dense float32 weights: %s", exc)
        if self.decode_step is None and (quantization != "none" or compile_decode or precision.split):
            shared = not precision.split and quantization == "none"
            self.decode_step = DecodeStep(
                cfg, lambda name: w(name, precision.decode), precision.decode, quantization, compile_decode,
                reuse=self.layers if shared else None, reuse_head=self.lm_head if shared else None)
        if self.decode_step is not None:
            self.decode_rotary = Rotary(cfg, self.device, precision.decode) if precision.split else self.rotary
        self._q_size = cfg.num_heads * cfg.head_dim
        self._kv_size = cfg.num_kv_heads * cfg.head_dim

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids, positions: [T] for the T new tokens of the batch. Returns float32 logits [R, vocab]
        for the R rows named by the current context's `logit_rows`."""
        ctx = current_context()
        ids, positions = ids.to(self.device), positions.to(self.device)
        step = self.decode_step
        if step is not None and ids.shape[0] <= step.max_batch and (ctx.mode is ForwardMode.DECODE or step.exact):
            # decode batches, and with exact blocks short extends too, one row per new token (the same
            # float32 products as the extend pass; at most max_batch rows beat the dense weights)
            rows = ctx if ctx.mode is ForwardMode.DECODE else ctx.token_rows()
            cos, sin = self.decode_rotary.cos[positions].unsqueeze(1), self.decode_rotary.sin[positions].unsqueeze(1)
            return step(self.embed[ids], cos, sin, rows)
        cfg = self.cfg
        eps = cfg.rms_norm_eps
        cos = self.rotary.cos[positions].unsqueeze(1)
        sin = self.rotary.sin[positions].unsqueeze(1)
        h = self.embed[ids].to(self.extend_dtype)
        t = h.shape[0]
        for i, layer in enumerate(self.layers):
            x = F.rms_norm(h, (cfg.hidden_size,), layer["in_norm"], eps)
            qkv = x @ layer["qkv"]
            if cfg.qkv_bias:
                qkv = qkv + layer["qkv_bias"]
            q, k, v = qkv.split([self._q_size, self._kv_size, self._kv_size], dim=-1)
            q = q.view(t, cfg.num_heads, cfg.head_dim)
            k = k.view(t, cfg.num_kv_heads, cfg.head_dim)
            v = v.view(t, cfg.num_kv_heads, cfg.head_dim)
            if cfg.qk_norm:
                q = F.rms_norm(q, (cfg.head_dim,), layer["q_norm"], eps)
                k = F.rms_norm(k, (cfg.head_dim,), layer["k_norm"], eps)
            q, k = self.rotary(q, cos, sin), self.rotary(k, cos, sin)
            o = self.attention(i, q, k, v, ctx).to(self.extend_dtype)
            h = h + o.reshape(t, self._q_size) @ layer["o"]
            x = F.rms_norm(h, (cfg.hidden_size,), layer["post_norm"], eps)
            gate, up = (x @ layer["gate_up"]).chunk(2, dim=-1)
            h = h + (F.silu(gate) * up) @ layer["down"]
        h = F.rms_norm(h[ctx.logit_rows], (cfg.hidden_size,), self.norm, eps)
        return (h @ self.lm_head).float()

    __call__ = forward
