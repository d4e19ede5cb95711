"""Random-weight models of real shapes (Llama-3.2-1B, Llama-3-8B) for GPU benchmarks: the configs carry
the published shapes, and a scaled-down build runs and matches HF transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
from model_harness import assert_close, hf_logits, new_pool, prefill

from radixlm.engine.attention.torch_backend import TorchAttention
from radixlm.engine.kv_pool import KVPool
from radixlm.engine.model.config import ModelConfig
from radixlm.engine.model.presets import PRESETS, RandomWeights, preset_config, preset_dict, random_model

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def test_llama_3_2_1b_shape() -> None:
    c = preset_config("llama-3.2-1b")
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers) == (128256, 2048, 8192, 16)
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (32, 8, 64)
    assert c.tie_word_embeddings and c.rope_theta == 500000.0 and c.rms_norm_eps == 1e-5
    assert c.rope_scaling is not None and (c.rope_scaling.factor, c.rope_scaling.original_max_position_embeddings) == (32.0, 8192)
    assert c.num_parameters() == 1_235_814_400  # the published count of meta-llama/Llama-3.2-1B


def test_llama_3_8b_shape() -> None:
    c = preset_config("llama-3-8b")
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers) == (128256, 4096, 14336, 32)
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (32, 8, 128)
    assert not c.tie_word_embeddings and c.rope_theta == 500000.0 and c.rope_scaling is None
    assert c.max_position_embeddings == 8192
    assert c.num_parameters() == 8_030_261_248  # meta-llama/Meta-Llama-3-8B


@pytest.mark.parametrize("name", list(PRESETS))
def test_hf_reads_the_same_config(name: str) -> None:
    from transformers import LlamaConfig

    assert ModelConfig.from_dict(LlamaConfig(**preset_dict(name)).to_dict()) == preset_config(name)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="llama-3-8b"):
        preset_config("llama-2-70b")


def test_random_weights_are_deterministic_and_lazy() -> None:
    cfg = preset_config("llama-3-8b", **TINY)
    a, b = RandomWeights(cfg, seed=3), RandomWeights(cfg, seed=3)
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(a[name], b[name]) and a[name].shape == (64, 128)
    assert not torch.equal(a[name], RandomWeights(cfg, seed=4)[name])
    assert not torch.equal(a[name], a["model.layers.0.mlp.down_proj.weight"])
    assert float(a[name].std()) == pytest.approx(0.02, rel=0.2)
    assert torch.equal(a["model.norm.weight"], torch.ones(64))


@pytest.mark.parametrize("name", list(PRESETS))
def test_scaled_down_model_matches_hf_on_the_same_weights(name: str) -> None:
    """Our random weights load into HF's LlamaForCausalLM of the same config (every name and shape
    right), and both compute the same logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = preset_config(name, **TINY)
    hf = LlamaForCausalLM(LlamaConfig(**preset_dict(name, **TINY))).float().eval()
    missing, unexpected = hf.load_state_dict(dict(RandomWeights(cfg, seed=1, std=0.2)), strict=False)
    assert unexpected == [] and missing == (["lm_head.weight"] if cfg.tie_word_embeddings else [])
    ours = random_model(cfg, TorchAttention(), seed=1, std=0.2)
    ids = torch.randint(0, 256, (33,), generator=torch.Generator().manual_seed(0))
    logits, _ = prefill(ours, new_pool(cfg), ids)
    assert_close(logits, hf_logits(hf, ids), 1e-4)


def test_bf16_build_runs() -> None:
    cfg = preset_config("llama-3.2-1b", **TINY)
    model = random_model(cfg, TorchAttention(), dtype=torch.bfloat16)
    assert model.embed.dtype == torch.bfloat16 and model.layers[0]["qkv"].shape == (64, 64 + 2 * 32)
    pool = KVPool(64, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype=torch.bfloat16)
    logits, _ = prefill(model, pool, torch.arange(20))
    assert logits.shape == (20, 256) and bool(logits.isfinite().all())
