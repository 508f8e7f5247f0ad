#!/usr/bin/env bash
# Run the test suite (sets up .venv on first use). Extra arguments go to pytest, e.g. -m slow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
