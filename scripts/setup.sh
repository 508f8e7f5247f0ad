#!/usr/bin/env bash
# Create (once) and reuse the local virtual environment .venv with everything prunekit's demo and
# tests need. Idempotent: a second run only compares a stamp and returns in well under a second.
#
# torch: where no torch is installed, the CPU wheel of torch 2.13.0 is pinned (an unpinned torch
# pulls gigabytes of CUDA packages): first from local wheels (pip's find-links), then from
# PyTorch's CPU index, then from PyPI. To use a CUDA build, install it into .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=".venv"
TORCH_PIN="${PRUNEKIT_TORCH:-torch==2.13.0}"
STAMP="$VENV/.prunekit-setup-stamp"
want_stamp="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version 2>&1)" >&2
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $TORCH_PIN (CPU build)" >&2
  "${PIP[@]}" install --no-index "$TORCH_PIN" 2>/dev/null \
    || "${PIP[@]}" install "$TORCH_PIN" --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || "${PIP[@]}" install "$TORCH_PIN"
fi

echo "setup: installing prunekit (editable) with the dev extra" >&2
if ! "${PIP[@]}" install -e ".[dev]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); then
  echo "setup: installing prunekit failed (see the messages above)" >&2
  exit 1
fi
"$VENV/bin/python" -c "import prunekit, torch, pydantic, yaml, pytest" \
  || { echo "setup: the environment is incomplete (see the messages above)" >&2; exit 1; }
echo "$want_stamp" > "$STAMP"
