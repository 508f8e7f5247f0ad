"""DDP on CPU with gloo, 2 processes: identical masks on every rank after each event (global scope),
for every pruner type and the group_lasso regularizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.mark.distributed
def test_ddp_masks_identical_across_ranks(tmp_path: Path) -> None:
    world, store = 2, tmp_path / "rendezvous"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "ddp_worker.py"), str(rank), str(world), str(store), str(tmp_path / f"r{rank}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(world)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    results = [json.loads((tmp_path / f"r{rank}.json").read_text()) for rank in range(world)]
    for r in results:
        assert [e[0] for e in r["ddp_events"]] == [1, 3, 5, 7, 9]
        assert all(r["ddp_agree"]) and all(r["sync_agree"])
        assert not any(r["nosync_agree"])  # the check above can fail: unsynchronized ranks disagree
    assert results[0]["ddp_events"] == results[1]["ddp_events"]
    for r in results:
        assert [t[0] for t in r["types"]] == ["progressive", "block_mask", "group_lasso", "pattern_lock"]
        assert all(t[1] for t in r["types"]), r["types"]  # masks and weights identical on both ranks
        assert all(t[2] >= 1 and t[3] > 0 for t in r["types"]), r["types"]  # events ran and pruned
    assert results[0]["types"] == results[1]["types"]
