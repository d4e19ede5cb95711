"""The `radixlm` command: `info` about a model, `serve`, `bench` (the benchmark suite), and `demo`, the main
job on the embedded model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .torch_env import apply_torch_defaults


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
    from radixlm.demo import run_demo

    return run_demo(args.model, args.agents, args.dtype)


def _bench(args: argparse.Namespace) -> int:
    from radixlm.bench.suite import build_parser as bench_parser
    from radixlm.bench.suite import main as bench_main

    return bench_main(bench_parser().parse_args(args.bench_args))


def _serve(args: argparse.Namespace) -> int:
    from radixlm.engine.engine import EngineConfig
    from radixlm.engine.server import run_server

    from .config_flags import dataclass_from_args
    from .endpoint import default_endpoint, tcp_endpoint

    if args.endpoint and args.port:
        raise SystemExit("radixlm serve: give --endpoint or --port, not both")
    endpoint = args.endpoint or (tcp_endpoint(args.port) if args.port else default_endpoint())
    config = dataclass_from_args(EngineConfig, args)
    front = _start_http_front(args, endpoint)
    try:
        run_server(args.model, endpoint, config, args.parent_pid, args.curve_keys)
    finally:
        if front is not None:
            front.terminate()
            front.wait(timeout=5)
    return 0


def _start_http_front(args: argparse.Namespace, endpoint: str):  # -> subprocess.Popen | None
    """With --http-port, start the HTTP front (radixlm.http.server) as a child process: one more client of
    the engine, so the engine's loop never parses HTTP. It exits when this process does."""
    if args.http_port is None:
        return None
    import subprocess

    cmd = [sys.executable, "-m", "radixlm.http.server", "--engine", endpoint, "--host", args.http_host,
           "--port", str(args.http_port), "--model", args.model, "--parent-pid", str(os.getpid())]
    if args.api_key:
        cmd.append("--api-key-stdin")  # never on a command line, where `ps` shows it
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if args.api_key else None)
    if args.api_key:
        proc.stdin.write(args.api_key.encode() + b"\n")
        proc.stdin.close()
    return proc


def build_parser() -> argparse.ArgumentParser:
    from radixlm.engine.engine import EngineConfig

    from .config_flags import add_dataclass_flags

    parser = argparse.ArgumentParser(prog="radixlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a model's architecture, size, context length and load time")
    info.add_argument("--model", default="smollm2", help="alias (smollm2), local HF folder, or .gguf file")
    info.set_defaults(func=_info)
    serve = sub.add_parser("serve", help="run the engine as a ZeroMQ service")
    serve.add_argument("--model", default="smollm2", help="alias (smollm2), local HF folder, or .gguf file")
    serve.add_argument("--endpoint", help="ipc://PATH or tcp://HOST:PORT (default: ipc socket in a 0700 per-user directory)")
    serve.add_argument("--port", type=int, help="serve on tcp://127.0.0.1:PORT")
    serve.add_argument("--curve-keys", type=Path, help="CurveZMQ keys directory (radixlm.auth.create_keys); "
                       "required to serve TCP beyond loopback")
    engine_options = serve.add_argument_group("engine options (radixlm.connect(**options) takes the same names)")
    add_dataclass_flags(engine_options, EngineConfig)
    serve.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    http = serve.add_argument_group("HTTP front", "OpenAI-compatible /v1/... and SGLang-native /generate beside "
                                    "the ZeroMQ endpoint")
    http.add_argument("--http-port", type=int, help="serve HTTP on this port")
    http.add_argument("--http-host", default="127.0.0.1", help="address to bind (default: loopback only)")
    http.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every HTTP endpoint but /health")
    serve.set_defaults(func=_serve)
    # The suite parses its own options (`radixlm bench --help`), so the other commands never import it.
    bench = sub.add_parser("bench", add_help=False, help="the benchmark suite: SGLang-paper workloads on radixlm and "
                           "its peers (HF transformers, llama-cpp-python); see `radixlm bench --help`")
    bench.set_defaults(func=_bench)
    demo = sub.add_parser("demo", help="the main job: DSPy ReAct agents and a LangChain agent at once on the "
                          "embedded model through one engine, with live progress and a reuse summary")
    demo.add_argument("--model", default="smollm2")
    demo.add_argument("--agents", type=int, default=4, help="number of DSPy ReAct agents (plus one LangChain agent)")
    demo.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `radixlm` console command."""
    apply_torch_defaults()  # before build_parser imports torch, which loads OpenMP
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except (FileNotFoundError, PermissionError) as exc:  # a missing model, a refused bind: no traceback
        print(f"radixlm: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
