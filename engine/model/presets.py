"""Real model shapes with random weights, for benchmarks on machines that cannot download checkpoints.

`preset_dict(name)` is the HF config.json of a real checkpoint (architecture fields only; the same dict
builds a transformers LlamaConfig for a peer model), `preset_config(name)` the matching ModelConfig, and
`random_model(cfg, ...)` a LlamaModel of that shape whose weights are drawn directly on the target device
and dtype, one tensor at a time: an 8B model never exists in fp32 or on the host.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator, Mapping

import torch

from ..attention.backend import AttentionBackend
from .config import ModelConfig
from .llama import LlamaModel

_LLAMA3: dict[str, Any] = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    num_attention_heads=32,
    num_key_value_heads=8,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=128000,
    eos_token_id=128001,
)

PRESETS: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": dict(
        _LLAMA3,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        head_dim=64,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    ),
    # meta-llama/Meta-Llama-3-8B
    "llama-3-8b": dict(
        _LLAMA3,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        head_dim=128,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    ),
}


def preset_dict(name: str, **overrides: Any) -> dict[str, Any]:
    """The HF config dict of preset `name`, with fields replaced by `overrides` (e.g. num_hidden_layers=2)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**PRESETS[name], **overrides}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    return ModelConfig.from_dict(preset_dict(name, **overrides))


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF-named weight shapes of a Llama-family model (the names LlamaModel reads)."""
    h, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, cfg.intermediate_size),
        }
        if cfg.qkv_bias:
            shapes |= {p + f"self_attn.{n}_proj.bias": (size,) for n, size in zip("qkv", (q, kv, kv))}
        if cfg.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (cfg.head_dim,), p + "self_attn.k_norm.weight": (cfg.head_dim,)}
    return shapes


class RandomWeights(Mapping[str, torch.Tensor]):
    """A state dict whose tensors are drawn when read: norms 1, biases 0, the rest N(0, std).
    The same (seed, name) gives the same tensor on the same device."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0, std: float = 0.02) -> None:
        self.shapes = weight_shapes(cfg)
        self.device, self.dtype, self.seed, self.std = torch.device(device), dtype, seed, std

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if "norm" in name:
            return torch.ones(shape, device=self.device, dtype=self.dtype)
        if name.endswith(".bias"):
            return torch.zeros(shape, device=self.device, dtype=self.dtype)
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.empty(shape, device=self.device, dtype=self.dtype).normal_(0.0, self.std, generator=gen)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def random_model(cfg: ModelConfig, attention: AttentionBackend, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0, std: float = 0.02) -> LlamaModel:
    """A LlamaModel of `cfg`'s shape with random weights, built on `device` in `dtype`."""
    return LlamaModel(cfg, RandomWeights(cfg, device, dtype, seed, std), attention, device=device, dtype=dtype)
