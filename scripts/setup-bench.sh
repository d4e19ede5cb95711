#!/usr/bin/env bash
# Install the benchmark suite's peers into .venv (the `bench` extra: llama-cpp-python with its OpenAI-compatible
# server, matplotlib, smg).
# llama-cpp-python is compiled from source (10-20 minutes on 2 cores); on an x86-64 CPU with AVX2 for an
# explicit instruction set (AVX2, no AVX-512 / AMX: a native build crashed on an AVX-512 + AMX Intel Xeon),
# elsewhere with llama.cpp's defaults. Set CMAKE_ARGS to override, or
# LLAMA_CPP_WHEEL=/path/to/llama_cpp_python-*.whl to install that wheel instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup.sh
# Installs the extra's requirements as radixlm's metadata lists them (radixlm.bench.systems.install_peers:
# LLAMA_CPP_WHEEL, else CMAKE_ARGS, else radixlm.bench.systems.llama_cmake_args()).
.venv/bin/python -c "from radixlm.bench.systems import install_peers; raise SystemExit(install_peers())"
.venv/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
