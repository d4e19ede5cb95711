#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, real-model (slow) tests included.
# Extra arguments go to pytest. "No tests collected" (exit 5) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
. .venv/bin/activate
# SGLang's frontend test programs are read from its wheel (never committed); fetched once, the
# compatibility test (tests/test_sglang_programs.py) is skipped when this fails.
WHEELS="$HOME/.cache/radixlm/wheels"
if ! ls "$WHEELS"/sglang-0.5.23-*.whl >/dev/null 2>&1; then
  python -m pip download -q --no-deps sglang==0.5.23 -d "$WHEELS" \
    || echo "could not fetch the sglang 0.5.23 wheel: tests/test_sglang_programs.py will be skipped" >&2
fi
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
