"""Shared fixtures: ``examples`` on sys.path, one torch thread, clean registries.

The tests use tiny models: one intra-op thread is as fast, and immune to the large slowdowns that
torch's thread pool suffers on a 2-core machine when another process (a DDP rank, a subprocess
under test) holds a core. ``OMP_NUM_THREADS`` carries the same choice into subprocesses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
