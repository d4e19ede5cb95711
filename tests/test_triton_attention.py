"""The Triton attention kernels equal the torch backend (1e-3, fp32): extend over cached prefixes,
ragged batches, GQA, split-K decode, and a tiny Llama driven end to end by either backend.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a kernel, i.e. when the kernel modules are
imported, not when a kernel runs. So the kernels run in a child process started with TRITON_INTERPRET=1
(this file, run as a script): it executes every `case_*` function once and prints each case's largest
difference as JSON; the tests below read those numbers. This process never imports the kernels under
the interpreter, so no other test is affected. On a CUDA machine the same cases also run compiled
(marker `gpu`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOL = 1e-3
HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------------------------------------
# The child process: each case returns the largest |triton - torch| it saw (or raises).


def _pool(kv_heads: int, dim: int, device: str, slots: int = 512, seed: int = 0):
    from radixlm.engine.kv_pool import KVPool

    torch.manual_seed(seed)
    pool = KVPool(slots, num_layers=1, kv_heads=kv_heads, head_dim=dim, device=device)
    pool.k[0].normal_()
    pool.v[0].normal_()
    return pool


def _extend_diff(device: str, heads: int, kv_heads: int, dim: int, prefix_lens: list[int], new_lens: list[int],
                 seed: int) -> float:
    """One extend batch through both backends (and the kernel with 16-token blocks); each sequence's
    slots are scattered through the pool."""
    from radixlm.engine.attention.torch_backend import TorchAttention
    from radixlm.engine.attention.triton_backend import TritonAttention
    from radixlm.engine.attention.triton_extend import ExtendMeta, extend_attention
    from radixlm.engine.model.context import ForwardContext

    pool = _pool(kv_heads, dim, device, seed=seed)
    order = torch.randperm(pool.num_slots - 1)[: sum(prefix_lens) + sum(new_lens)] + 1
    seq_slots, start = [], 0
    for p, n in zip(prefix_lens, new_lens):
        seq_slots.append(order[start : start + p + n].to(device))
        start += p + n
    ctx = ForwardContext.for_extend(pool, seq_slots, prefix_lens, torch.arange(len(new_lens)))
    t = sum(new_lens)
    q = torch.randn(t, heads, dim, device=device)
    kv = torch.randn(t, 2 * kv_heads, dim, device=device)
    k, v = kv[:, :kv_heads], kv[:, kv_heads:]  # strided views, as the model's fused qkv split gives
    ref = TorchAttention()(0, q, k, v, ctx)
    out = TritonAttention()(0, q, k, v, ctx)  # 64-token blocks
    meta = ExtendMeta.build(ctx.seq_slots, prefix_lens, new_lens, torch.device(device))
    small = extend_attention(q, k, v, pool.k[0], pool.v[0], meta, block_m=16, block_n=16)  # many blocks per row
    return max(float((out - ref).abs().max()), float((small - ref).abs().max()))


def _decode_diff(device: str, heads: int, kv_heads: int, dim: int, lens: list[int], splits: list[int],
                 seed: int, shared: int = 0) -> float:
    """Decode rows of different lengths (padded kv_index) through the split-K kernel with 16-token
    blocks, for each number of splits, against the torch backend."""
    from radixlm.engine.attention.torch_backend import TorchAttention
    from radixlm.engine.attention.triton_decode import DecodeMeta, decode_attention
    from radixlm.engine.model.context import ForwardContext

    pool = _pool(kv_heads, dim, device, seed=seed)
    prefix = torch.randperm(pool.num_slots - 1)[:shared] + 1
    rest = torch.tensor([s for s in range(1, pool.num_slots) if s not in set(prefix.tolist())])
    rest = rest[torch.randperm(len(rest))]
    index = torch.zeros(len(lens), max(lens), dtype=torch.long)
    start = 0
    for b, n in enumerate(lens):
        index[b, :n] = torch.cat([prefix, rest[start : start + n - shared]])
        start += n - shared
    lens_t = torch.tensor(lens)
    ctx = ForwardContext.for_decode(pool, index.to(device), lens_t)
    q = torch.randn(len(lens), heads, dim, device=device)
    k_new, v_new = pool.k[0][ctx.out_slots].clone(), pool.v[0][ctx.out_slots].clone()
    ref = TorchAttention()(0, q, k_new, v_new, ctx)
    worst = 0.0
    for n in splits:
        meta = DecodeMeta.build(ctx.kv_index, lens_t, heads, dim, n, torch.device(device))
        out = decode_attention(q, pool.k[0], pool.v[0], meta, block_n=16)
        worst = max(worst, float((out - ref).abs().max()))
    return worst


def case_extend_no_prefix(device: str) -> float:
    return _extend_diff(device, 4, 2, 16, [0], [77], seed=1)


def case_extend_cached_prefix(device: str) -> float:
    return _extend_diff(device, 4, 2, 16, [37], [21], seed=2)


def case_extend_ragged_batch(device: str) -> float:
    """Fresh, cached-prefix and one-token sequences in one call (the torch side groups the short
    ones)."""
    return _extend_diff(device, 4, 2, 16, [0, 20, 8, 0, 50, 3], [23, 15, 1, 1, 33, 64], seed=3)


def case_extend_gqa_group4_dim24(device: str) -> float:
    return _extend_diff(device, 8, 2, 24, [0, 19], [18, 40], seed=4)


def case_extend_mha_group3(device: str) -> float:
    return (max(_extend_diff(device, 4, 4, 32, [5, 0], [30, 9], seed=5),
                _extend_diff(device, 6, 2, 16, [11, 0], [7, 29], seed=6)))


def case_decode_split_k(device: str) -> float:
    return _decode_diff(device, 4, 2, 16, [37, 100, 5, 64, 1, 17], [1, 2, 3, 4, 8], seed=7)


def case_decode_more_splits_than_blocks(device: str) -> float:
    """Short rows leave most splits empty; they must get no weight in the merge."""
    return _decode_diff(device, 4, 2, 16, [3, 18, 9], [16, 32], seed=8)


def case_decode_gqa_group4_dim24(device: str) -> float:
    return _decode_diff(device, 8, 2, 24, [70, 33, 129], [1, 4, 5], seed=9)


def case_decode_shared_prefix_batch(device: str) -> float:
    """A batch whose rows share 40 leading slots (the torch side runs its cascade path)."""
    return _decode_diff(device, 4, 2, 16, [45, 61, 41, 90], [2, 4], seed=10, shared=40)


def case_backend_decode_equal_lengths(device: str) -> float:
    """Through TritonAttention itself (its own split choice and per-context index cache) with kv_mask=None."""
    from radixlm.engine.attention.torch_backend import TorchAttention
    from radixlm.engine.attention.triton_backend import TritonAttention
    from radixlm.engine.model.context import ForwardContext

    pool = _pool(2, 16, device, seed=11)
    index = (torch.randperm(pool.num_slots - 1)[: 3 * 150] + 1).view(3, 150)
    ctx = ForwardContext.for_decode(pool, index.to(device), torch.tensor([150, 150, 150]))
    q = torch.randn(3, 4, 16, device=device)
    k, v = torch.randn(3, 2, 16, device=device), torch.randn(3, 2, 16, device=device)
    worst = 0.0
    for backend in (TritonAttention(), TritonAttention(decode_splits=3)):
        ref = TorchAttention()(0, q, k, v, ctx)
        worst = max(worst, float((backend(0, q, k, v, ctx) - ref).abs().max()))
    return worst


def case_tiny_llama_logits(device: str) -> float:
    """A tiny random Llama (llama3 rope, GQA) through prefill, extend over a cached prefix, a mixed
    extend batch and padded batched decode, once per backend: the logits agree."""
    from model_harness import build, decode_batch, extend, new_pool, prefill

    from radixlm.engine.attention.torch_backend import TorchAttention
    from radixlm.engine.attention.triton_backend import TritonAttention

    model = build("llama3", seed=0).ours
    g = torch.Generator().manual_seed(12)
    a, b, c = (torch.randint(0, 128, (n,), generator=g) for n in (30, 25, 9))

    def run(attention) -> list[torch.Tensor]:
        model.attention = attention
        pool = new_pool(model.cfg)
        la, sa = prefill(model, pool, a)
        (lb,), (sb,) = extend(model, pool, [(sa[:20], b)])  # b continues a's first 20 tokens
        lmix, slots = extend(model, pool, [(torch.empty(0, dtype=torch.long), c), (sb, b[:3]), (sa, a[:1])])
        out = [la, lb, *lmix]
        for step in range(3):
            logits, slots = decode_batch(model, pool, slots, [5 + step, 17, 99])
            out.append(logits)
        return out

    ref, ours = run(TorchAttention()), run(TritonAttention(decode_splits=2))
    for r, o in zip(ref, ours):
        if not torch.equal(r.argmax(-1), o.argmax(-1)):
            raise AssertionError("argmax differs between backends")
    return max(float((r - o).abs().max()) for r, o in zip(ref, ours))


def case_engine_generate(device: str) -> float:
    """The engine generating greedily over shared prefixes (radix hits, chunked prefill, batched decode)
    gives the same tokens with attention_backend="triton" as with "torch"; returns 0 if so."""
    from model_harness import build

    from radixlm.engine.engine import Engine, EngineConfig
    from radixlm.protocol import SamplingParams

    g = torch.Generator().manual_seed(13)
    trunk = torch.randint(0, 128, (24,), generator=g).tolist()
    prompts = [trunk + torch.randint(0, 128, (k,), generator=g).tolist() for k in (1, 4, 11)]
    outputs = {}
    for name in ("torch", "triton"):
        engine = Engine(build("llama3", seed=1).ours, EngineConfig(attention_backend=name, chunk_size=16,
                                                                   kv_cache_tokens=512))
        if engine.model.attention.name != name:
            raise AssertionError(f"engine runs {engine.model.attention.name}, asked for {name}")
        outputs[name] = [r.output_ids for r in engine.generate(prompts, SamplingParams(max_new_tokens=4, ignore_eos=True))]
        engine.check_integrity()
    if outputs["torch"] != outputs["triton"]:
        raise AssertionError(f"tokens differ: {outputs}")
    return 0.0


def case_bf16_against_fp32_reference(device: str) -> tuple[float, float] | None:
    """bf16 pool and activations (the GPU setting) against the torch backend in fp32 on the same values,
    within bf16 rounding (|diff| / (|ref| + 1) <= 2e-2). Compiled GPU runs only: triton 3.9's interpreter
    multiplies bf16 tl.dot operands as raw 16-bit integers."""
    if device == "cpu":
        return None
    from radixlm.engine.attention.torch_backend import TorchAttention
    from radixlm.engine.attention.triton_backend import TritonAttention
    from radixlm.engine.kv_pool import KVPool
    from radixlm.engine.model.context import ForwardContext

    ref_pool = _pool(8, 128, device, slots=4096, seed=14)
    pool = KVPool(4096, 1, 8, 128, dtype=torch.bfloat16, device=device)
    pool.k[0].copy_(ref_pool.k[0])
    pool.v[0].copy_(ref_pool.v[0])
    ref_pool.k[0].copy_(pool.k[0])  # the reference sees the bf16-rounded values
    ref_pool.v[0].copy_(pool.v[0])
    seq_slots = [torch.arange(1, 301, device=device), torch.arange(400, 1400, device=device)]
    index = torch.stack([torch.arange(1, 1001), torch.arange(1001, 2001)]).to(device)
    worst = 0.0
    for mode, tokens in (("extend", 600), ("decode", 2)):
        q, k, v = (torch.randn(tokens, h, 128, device=device).bfloat16() for h in (32, 8, 8))
        outs = []
        for p, qkv in ((ref_pool, (q.float(), k.float(), v.float())), (pool, (q, k, v))):
            if mode == "extend":
                ctx = ForwardContext.for_extend(p, seq_slots, [0, 700], torch.arange(2))
            else:
                ctx = ForwardContext.for_decode(p, index, torch.tensor([1000, 613]))
            backend = TorchAttention() if p is ref_pool else TritonAttention()
            outs.append(backend(0, *qkv, ctx).float())
        worst = max(worst, float(((outs[1] - outs[0]).abs() / (outs[0].abs() + 1)).max()))
    return worst, 2e-2


CASES = sorted(name for name in list(globals()) if name.startswith("case_"))


def _child(device: str) -> None:
    results = {}
    for name in CASES:
        try:
            result = globals()[name](device)
            if result is None:
                results[name] = {"skip": f"not run on {device}"}
            else:
                diff, tol = result if isinstance(result, tuple) else (result, TOL)
                results[name] = {"diff": diff, "tol": tol}
        except Exception as exc:  # reported per case; the parent test names it
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results))


# ---------------------------------------------------------------------------------------------------
# The tests, in this process.


def _run_child(device: str, interpret: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(HERE), device], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"kernel process failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return _run_child("cpu", interpret=True)


@pytest.fixture(scope="module")
def compiled_gpu() -> dict:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return _run_child("cuda", interpret=False)


def _check(results: dict, case: str) -> None:
    result = results[case]
    if "skip" in result:
        pytest.skip(result["skip"])
    assert "error" not in result, result.get("error")
    assert result["diff"] <= result["tol"], f"{case}: max |triton - torch| = {result['diff']:.3g} > {result['tol']}"


@pytest.mark.parametrize("case", CASES)
def test_interpreted_kernels_equal_torch(interpreted: dict, case: str) -> None:
    _check(interpreted, case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_compiled_kernels_equal_torch_on_gpu(compiled_gpu: dict, case: str) -> None:
    _check(compiled_gpu, case)


def test_choose_splits() -> None:
    from radixlm.engine.attention.triton_decode import MAX_SPLITS, choose_splits

    assert choose_splits(batch=1, kv_heads=8, max_len=8192, num_sms=132) == 32  # long row, idle GPU: split
    assert choose_splits(batch=64, kv_heads=8, max_len=8192, num_sms=132) == 1  # the batch fills the GPU
    assert choose_splits(batch=1, kv_heads=8, max_len=100, num_sms=132) == 2  # no more splits than blocks
    assert choose_splits(batch=1, kv_heads=1, max_len=10**6, num_sms=1000) == MAX_SPLITS
    assert choose_splits(batch=2, kv_heads=8, max_len=4096, num_sms=132) == 32  # rounded up to a power of two


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    from radixlm.engine.attention.select import make_attention, resolve_backend
    from radixlm.engine.engine import EngineConfig

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("torch", "cuda") == "torch"
    assert resolve_backend("triton", "cuda") == "triton"
    assert make_attention("auto", "cpu").name == "torch"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_backend("triton", "cpu")
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("flash", "cpu")
    with pytest.raises(ValueError, match="unknown attention backend"):
        EngineConfig(attention_backend="flash").validate()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"


def test_serve_flag_reaches_engine_config() -> None:
    from radixlm.cli import build_parser

    args = build_parser().parse_args(["serve", "--attention-backend", "triton"])
    assert args.attention_backend == "triton"
    assert build_parser().parse_args(["serve"]).attention_backend == "auto"


def test_engine_keeps_or_replaces_the_models_backend() -> None:
    from model_harness import build

    from radixlm.engine.engine import Engine, EngineConfig

    model = build("llama3").ours
    Engine(model, EngineConfig())
    assert model.attention.name == "torch"  # auto keeps the backend the model was built with
    Engine(model, EngineConfig(attention_backend="torch"))
    assert model.attention.name == "torch"


if __name__ == "__main__":
    _child(sys.argv[1] if len(sys.argv) > 1 else "cpu")
