"""The engine on a tiny random-weight Llama: chunking, caching and batching keep HF's greedy output."""

from __future__ import annotations

import pytest
import torch

from model_harness import build
from radixlm.engine.engine import Engine, EngineConfig
from radixlm.protocol import SamplingParams


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("chunk_size", [3, 16, 4096])
@pytest.mark.parametrize("radix_cache", [True, False])
def test_engine_matches_hf_generate_under_chunking_and_cache_ablation(chunk_size, radix_cache):
    pair = build("llama3", seed=1)
    g = torch.Generator().manual_seed(0)
    trunk = torch.randint(0, pair.cfg.vocab_size, (40,), generator=g).tolist()
    prompts = [trunk + torch.randint(0, pair.cfg.vocab_size, (k,), generator=g).tolist() for k in (1, 5, 9, 13)]
    engine = Engine(pair.ours, EngineConfig(chunk_size=chunk_size, radix_cache=radix_cache, kv_cache_tokens=2048))
    results = engine.generate(prompts, SamplingParams(max_new_tokens=6, ignore_eos=True))
    assert [r.output_ids for r in results] == [hf_greedy(pair.hf, p, 6) for p in prompts]
    engine.check_integrity()
