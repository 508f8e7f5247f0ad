"""PruningCallback under Lightning's ModelParallelStrategy (FSDP2 via ``configure_model``) on CPU ranks.

Lightning starts the ranks itself (``lightning_fsdp_worker.py``). Sharded training gives the masks of
one process; a checkpoint taken on 2 ranks (the callback gathers its shards: Lightning saves callback
state from rank 0 only) resumes on 3 ranks: the schedule goes on from the saved step and the saved
masks, and reaches its target. (Lightning's own resume of this strategy is not bit-exact on CPU even
without pruning, so the resumed run is not compared mask for mask with an uninterrupted one.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
pytestmark = pytest.mark.distributed


def run(devices: int, mode: str, folder: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(HERE / "lightning_fsdp_worker.py"), str(devices), mode, str(folder)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads((folder / f"{mode}-{devices}.json").read_text())


def test_lightning_fsdp2_prunes_like_one_process_and_resumes_on_more_ranks(tmp_path: Path) -> None:
    one, two = run(1, "full", tmp_path), run(2, "full", tmp_path)
    assert two["sharded"] and two["history"][-1][2] == pytest.approx(0.6, abs=0.01)
    assert two["masks"] == one["masks"] and two["history"] == one["history"]

    saved = json.loads((tmp_path / "step4-2.json").read_text())  # what ModelCheckpoint saved at step 4 of the 2-rank run
    assert (tmp_path / "step=4.ckpt").is_dir()
    resumed = run(3, "resume", tmp_path)
    assert resumed["started"] == 4  # Lightning restored step 4, and prunekit the session of step 4
    assert resumed["history"][: len(saved["history"])] == saved["history"]  # the saved events, then new ones
    assert [h[0] for h in resumed["history"]] == [1, 3, 5, 7]
    assert resumed["history"][-1][2] == pytest.approx(0.6, abs=0.01)
    for name, mask in resumed["masks"].items():
        before = saved["masks"][name]
        assert all(b or not a for ra, rb in zip(mask, before) for a, b in zip(ra, rb)), f"{name}: a weight pruned before the save came back"
        rows = len(mask)
        for r0 in range(0, rows, 4):  # 4x1 blocks stay whole across the 3 ranks' shard boundaries (rows 10, 20)
            for c in range(len(mask[0])):
                assert len({mask[r][c] for r in range(r0, min(r0 + 4, rows))}) == 1, (name, r0, c)
