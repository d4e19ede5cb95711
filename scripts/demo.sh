#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the embedded model: `radixlm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
radixlm demo "$@"
