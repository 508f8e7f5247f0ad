"""Shared fixtures: the repository root on sys.path for ``examples`` and a clean registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

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


@pytest.fixture
def isolated_scheduler_registry():
    """SCHEDULERS holds only prunekit's own entries during the test and is restored afterwards."""
    import prunekit as pk

    registry = pk.SCHEDULERS
    saved_entries, saved_aliases = dict(registry._entries), dict(registry._aliases)
    for entry in list(registry._entries.values()):
        if not entry.obj.__module__.startswith("prunekit."):
            registry.unregister(entry.name)
    yield registry
    registry._entries.clear()
    registry._entries.update(saved_entries)
    registry._aliases.clear()
    registry._aliases.update(saved_aliases)
