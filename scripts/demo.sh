#!/usr/bin/env bash
# Run the main job: the prunekit demo (sets up .venv on first use). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/prunekit demo "$@"
