#!/usr/bin/env bash
# Install the benchmark suite's peers into .venv (the `bench` extra: llama-cpp-python, matplotlib).
# llama-cpp-python is compiled from source (10-20 minutes on 2 cores) for an explicit instruction set
# (AVX2, no AVX-512 / AMX: a native build crashed on an AVX-512 + AMX Intel Xeon); set CMAKE_ARGS to
# override, or LLAMA_CPP_WHEEL=/path/to/llama_cpp_python-*.whl to install a wheel built that way.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup.sh
if [ -n "${LLAMA_CPP_WHEEL:-}" ]; then
  .venv/bin/python -m pip install -q "$LLAMA_CPP_WHEEL"
fi
# Installs the extra's requirements as radixlm's metadata lists them, with radixlm's CMAKE_ARGS
# (radixlm.bench.systems.LLAMA_CMAKE_ARGS) unless CMAKE_ARGS is set.
.venv/bin/python -c "from radixlm.bench.systems import install_peers; raise SystemExit(install_peers())"
.venv/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
