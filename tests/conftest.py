"""Shared fixtures: the repository root on sys.path for ``examples`` and a clean registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONFIGS = ROOT / "configs"

if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


@pytest.fixture
def scratch_scheduler_names():
    """Names registered by a test in SCHEDULERS are removed again afterwards."""
    import prunekit as pk

    before = set(pk.SCHEDULERS.names())
    yield
    for name in set(pk.SCHEDULERS.names()) - before:
        pk.SCHEDULERS.unregister(name)
