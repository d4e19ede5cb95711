"""The `radixlm` command: `info` about a model, and `demo`, the main job on the embedded model."""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT_QUESTION = "In two sentences, why does reusing a shared prompt prefix make LLM agents faster?"


def _info(args: argparse.Namespace) -> int:
    from radixlm.engine.loader import load_model

    m = load_model(args.model)
    c = m.config
    print(f"model            {args.model}  ({m.folder})")
    print(f"architecture     {c.model_type}: {c.num_layers} layers, hidden {c.hidden_size}, "
          f"{c.num_heads} heads / {c.num_kv_heads} kv heads x {c.head_dim}, mlp {c.intermediate_size}")
    print(f"parameters       {c.num_parameters() / 1e6:.1f} M")
    print(f"context length   {c.max_position_embeddings} tokens")
    print(f"vocabulary       {c.vocab_size} tokens; chat template: {'yes' if m.tokenizer.has_chat_template else 'no'}")
    print(f"load time        {m.load_seconds:.2f} s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from radixlm.engine.engine import Engine, EngineConfig
    from radixlm.engine.request import SamplingParams

    start = time.perf_counter()
    engine = Engine.from_model(args.model, EngineConfig(dtype=args.dtype))
    tok = engine.tokenizer
    print(f"engine ready in {time.perf_counter() - start:.1f} s ({args.model})")
    messages = [{"role": "user", "content": args.question}]
    prompt = tok.encode(tok.apply_chat_template(messages))
    t0 = time.perf_counter()
    first = engine.generate([prompt], SamplingParams(max_new_tokens=args.max_tokens))[0]
    t1 = time.perf_counter()
    messages += [{"role": "assistant", "content": first.text},
                 {"role": "user", "content": "Summarise that in five words."}]
    follow = tok.encode(tok.apply_chat_template(messages))
    second = engine.generate([follow], SamplingParams(max_new_tokens=args.max_tokens))[0]
    t2 = time.perf_counter()
    print(f"\nQ: {args.question}\nA: {first.text}\n")
    print(f"first call : {first.prompt_tokens} prompt tokens ({first.cached_tokens} cached), "
          f"{first.completion_tokens} generated in {t1 - t0:.2f} s "
          f"({first.completion_tokens / (t1 - t0):.1f} tok/s incl. prefill)")
    print(f"follow-up  : {second.prompt_tokens} prompt tokens ({second.cached_tokens} cached from the first call), "
          f"{second.completion_tokens} generated in {t2 - t1:.2f} s -> {second.text!r}")
    stats = engine.stats_dict()
    print(f"engine     : hit rate {stats['hit_rate']:.0%}, {stats['forward_passes']} forward passes, "
          f"decode {stats['decode_tokens_per_s']:.1f} tok/s")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from radixlm.engine.engine import EngineConfig
    from radixlm.engine.server import run_server

    from .endpoint import default_endpoint, tcp_endpoint

    if args.endpoint and args.port:
        raise SystemExit("radixlm serve: give --endpoint or --port, not both")
    endpoint = args.endpoint or (tcp_endpoint(args.port) if args.port else default_endpoint())
    config = EngineConfig(
        kv_cache_tokens=args.kv_cache_tokens,
        max_running_requests=args.max_running_requests,
        chunk_size=args.chunk_size,
        policy=args.policy,
        radix_cache=not args.no_radix_cache,
        max_context=args.max_context,
        dtype=args.dtype,
        jump_forward=not args.no_jump_forward,
    )
    run_server(args.model, endpoint, config, args.parent_pid)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radixlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a model's architecture, size, context length and load time")
    info.add_argument("--model", default="smollm2", help="alias (smollm2), local HF folder, or .gguf file")
    info.set_defaults(func=_info)
    serve = sub.add_parser("serve", help="run the engine as a ZeroMQ service")
    serve.add_argument("--model", default="smollm2", help="alias (smollm2), local HF folder, or .gguf file")
    serve.add_argument("--endpoint", help="ipc://PATH or tcp://HOST:PORT (default: ipc socket in a 0700 per-user directory)")
    serve.add_argument("--port", type=int, help="serve on tcp://127.0.0.1:PORT")
    serve.add_argument("--kv-cache-tokens", type=int, default=32768, help="KV pool size in tokens")
    serve.add_argument("--max-running-requests", type=int, default=128)
    serve.add_argument("--chunk-size", type=int, default=1024, help="most prompt tokens per extend pass")
    serve.add_argument("--policy", choices=["lpm", "dfs-weight", "fcfs"], default="lpm")
    serve.add_argument("--no-radix-cache", action="store_true", help="the cache-off ablation")
    serve.add_argument("--max-context", type=int, help="longest prompt + output (default: the model's)")
    serve.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                       help="weights and KV precision (bfloat16: about 3x faster prefill and batched decode on CPU)")
    serve.add_argument("--no-jump-forward", action="store_true", help="decode grammar-forced tokens one by one")
    serve.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)
    demo = sub.add_parser("demo", help="the main job: chat through the engine on the embedded model")
    demo.add_argument("--model", default="smollm2")
    demo.add_argument("--question", default=DEFAULT_QUESTION)
    demo.add_argument("--max-tokens", type=int, default=96)
    demo.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `radixlm` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as exc:
        print(f"radixlm: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
