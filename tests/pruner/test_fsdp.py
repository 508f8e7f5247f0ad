"""FSDP2 (``fully_shard``) on CPU with gloo, 2 and 3 ranks: the masks, sparsity and history of an
unsharded run (one process), for global and local scope, 1x1, 4x1 and 8x1 blocks (also where shards
cut through blocks), 2:4 and both channel patterns; pruned weights and their momentum stay zero on
every rank; each rank keeps 1/world of the masks and scores; a state saved with
``torch.distributed.checkpoint`` on 2 ranks resumes on 3 (through the Trainer callback: 3 -> 2) with
the same final masks.

Each world size is one launch of ``fsdp_worker.py`` running every scenario in turn (a launch costs
a few seconds of interpreter and torch start-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.distributed

#: aligned shards (32-48-24-24: 2 and 3 ranks split every layer at multiples of 8 rows) and shards that
#: cut through blocks (32-50-30-22: 25/17 rows per rank, blocks of 4 and 8 straddle the boundaries)
TRAINED = [
    "train:1x1_global", "train:4x1_snip_momentum", "train:2:4", "train:1xchannel", "train:channelx1",
    "train:4x1_snip_momentum@32-50-30-22", "train:8x1@32-50-30-22", "train:2x2_local@32-50-30-22",
    "train:8x1@32-9-30-22",  # 4 ranks (below): 9 rows split 3/3/3/0, 30 rows 8/8/8/6 (a last shard shorter than a block)
    "train:units@tf",  # attention heads (snip_momentum) and FFN channels (global) of a 2-layer transformer encoder
]
#: one event on weights rounded to multiples of 1/8: thousands of exact ties, broken by flat index across ranks
TIES = [
    "ties:1x1_global", "ties:1x1_local", "ties:4x1_local@32-50-30-22", "ties:2:4", "ties:1xchannel", "ties:channelx1",
    "ties:8x1@32-50-30-22",  # 3 ranks: the last shard of the 22-row layer holds 6 rows, fewer than a block
]
#: ranks that own no block row or hold no rows at all (3 and 4 ranks): their local patterns are degenerate, yet
#: they must take every collective the others take (found by review: these hung before)
EMPTY = [
    "ties:2x1_global@32-6-30-22", "ties:8x1@32-16-30-22",  # 4 ranks: 6 rows split 2/2/2/0; 16 rows, 8x1: rank 1 owns none
    "train:score_only@32-4-32-8", "train:score_only_first@32-4-32-8",  # 3 ranks: the 4-row layer splits 2/2/0
]


def launch(tmp: Path, world: int, scenarios: list[str], arg: str | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """Run ``fsdp_worker.py`` on ``world`` ranks; every rank's ``{scenario: result}``."""
    tag = f"{device}-{world}-{abs(hash(tuple(scenarios))) % 10**8}"
    store, out = tmp / f"store-{tag}", tmp / f"out-{tag}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1", "PRUNEKIT_TEST_DEVICE": device}
    cmd = [str(HERE / "fsdp_worker.py"), "", str(world), str(store), str(out), ",".join(scenarios)] + ([arg] if arg else [])
    procs = []
    for rank in range(world):
        cmd[1] = str(rank)
        procs.append(subprocess.Popen([sys.executable, *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    texts = [p.communicate(timeout=240)[0] for p in procs]
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text[-4000:]
    results = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(world)]
    for rank, result in enumerate(results):
        for scenario, r in result.items():
            assert "error" not in r, f"rank {rank}, {scenario}: {r.get('traceback', r['error'])}"
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("fsdp")
    return {world: launch(tmp, world, TRAINED + TIES + EMPTY + ["refuse:-"]) for world in (1, 2, 3)}


@pytest.mark.parametrize("scenario", TRAINED + TIES)
def test_sharded_masks_equal_the_unsharded_ones(runs: dict[int, list[dict[str, Any]]], scenario: str) -> None:
    reference = runs[1][0][scenario]
    assert reference["history"], "the reference run pruned nothing"
    for world in (2, 3):
        for rank, result in enumerate(runs[world]):
            got = result[scenario]
            assert got["masks"] == reference["masks"], f"{world} ranks, rank {rank}: masks differ"
            assert got["history"] == reference["history"]  # steps, targets, whole-layer sparsities (reduced over ranks)
            assert got["report"] == reference["report"]  # whole shapes, element counts and sparsities
            assert got["zero"], f"{world} ranks, rank {rank}: a pruned weight or its momentum is not zero"


@pytest.mark.parametrize("scenario", EMPTY)
def test_ranks_without_rows_or_blocks(runs: dict[int, list[dict[str, Any]]], scenario: str) -> None:
    for world in (2, 3):
        for result in runs[world]:
            assert result[scenario]["masks"] == runs[1][0][scenario]["masks"], (world, scenario)
            assert result[scenario]["history"] == runs[1][0][scenario]["history"], (world, scenario)


def test_four_ranks_with_an_empty_shard_and_a_short_last_one(tmp_path: Path, runs: dict[int, list[dict[str, Any]]]) -> None:
    """Shards without rows, block rows whose rows come from two other ranks, a last shard shorter than a block."""
    scenarios = ["train:8x1@32-9-30-22", "ties:2x1_global@32-6-30-22", "ties:8x1@32-16-30-22"]
    for result in launch(tmp_path, 4, scenarios):
        for scenario in scenarios:
            assert result[scenario]["masks"] == runs[1][0][scenario]["masks"], scenario
            assert result[scenario]["history"] == runs[1][0][scenario]["history"], scenario


def test_sparsity_reaches_the_target(runs: dict[int, list[dict[str, Any]]]) -> None:
    for scenario, target in (("train:1x1_global", 0.7), ("train:2:4", 0.5), ("train:4x1_snip_momentum", 0.75), ("train:channelx1", 0.5)):
        for world in (2, 3):
            history = runs[world][0][scenario]["history"]
            assert history[-1][1] == target
            assert abs(history[-1][2] - target) < 0.01, (scenario, world, history[-1])


def test_each_rank_keeps_its_share_of_masks_and_scores(runs: dict[int, list[dict[str, Any]]]) -> None:
    for scenario in ("train:4x1_snip_momentum", "train:1x1_global", "train:4x1_snip_momentum@32-50-30-22"):
        unsharded = runs[1][0][scenario]["state_bytes"]
        for world in (2, 3):
            worst = max(result[scenario]["state_bytes"] for result in runs[world])
            assert worst <= (1 / world + 0.05) * unsharded, (scenario, world, worst, unsharded)


def test_save_on_some_ranks_resume_on_others(tmp_path: Path, runs: dict[int, list[dict[str, Any]]]) -> None:
    """torch.distributed.checkpoint: saved inside the pruning window (scores included), resharded on load."""
    names = ["4x1_snip_momentum", "4x1_snip_momentum@32-50-30-22", "channelx1", "units@tf"]
    for saver, loader in ((2, 3),):  # (3 -> 2: test_trainer_callback_saves_shards_and_resumes_on_other_ranks)
        folder = tmp_path / f"{saver}to{loader}"
        launch(tmp_path, saver, [f"save:{n}" for n in names], str(folder))
        resumed = launch(tmp_path, loader, [f"resume:{n}" for n in names], str(folder))
        for name in names:
            reference = runs[1][0][f"train:{name}"]
            for result in resumed:
                assert result[f"resume:{name}"]["masks"] == reference["masks"], (saver, loader, name)
                assert result[f"resume:{name}"]["history"] == reference["history"]


def test_trainer_callback_saves_shards_and_resumes_on_other_ranks(tmp_path: Path, runs: dict[int, list[dict[str, Any]]]) -> None:
    """PruningTrainerCallback under FSDP2: on_save writes prunekit_pruning/ (DCP) into checkpoint-N, a
    resume on another number of ranks restores it and ends with the unsharded run's masks."""
    name = "4x1_snip_momentum@32-50-30-22"
    launch(tmp_path, 3, [f"hfsave:{name}"], str(tmp_path))
    assert (tmp_path / name / "checkpoint-5" / "prunekit_pruning" / "prunekit_state.json").is_file()
    resumed = launch(tmp_path, 2, [f"hfresume:{name}"], str(tmp_path))
    reference = runs[1][0][f"train:{name}"]
    for result in resumed:
        assert result[f"hfresume:{name}"]["masks"] == reference["masks"]
        assert result[f"hfresume:{name}"]["history"] == reference["history"]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_sharded_masks_equal_the_unsharded_ones_on_gpus_with_nccl(tmp_path: Path) -> None:
    """The same comparison on CUDA: NCCL collectives, masks and scores on the GPUs."""
    scenarios = ["train:1x1_global", "train:4x1_snip_momentum@32-50-30-22", "train:2:4", "train:channelx1", "ties:8x1@32-50-30-22"]
    reference = launch(tmp_path, 1, scenarios, device="cuda")[0]
    for world in sorted({2, min(3, torch.cuda.device_count())}):
        for result in launch(tmp_path, world, scenarios, device="cuda"):
            for scenario in scenarios:
                assert result[scenario]["masks"] == reference[scenario]["masks"], (world, scenario)
                assert result[scenario]["zero"], (world, scenario)


def test_what_cannot_be_sharded_is_refused_with_a_message(runs: dict[int, list[dict[str, Any]]]) -> None:
    messages = runs[2][0]["refuse:-"]
    assert "placed [Replicate()]" in messages["replicate"] and "Shard(0)" in messages["replicate"]
    assert "does not prune FSDP2-sharded weights" in messages["type"] and "type: basic" in messages["type"]
    assert "sharded (fully_shard) after this Pruning session was built" in messages["late"]
    assert "is sharded by FSDP2" in messages["slim"] and "Nothing was changed" in messages["slim"]


def test_the_fsdp2_example_script_trains_saves_and_resumes_on_more_ranks(tmp_path: Path) -> None:
    """examples/fsdp2_train.py as docs/distributed.md runs it: torchrun, 2 ranks save at step 20, 3 resume."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "examples" / "fsdp2_train.py")

    def torchrun(ranks: int, *extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", script,
             "--out", str(tmp_path / "run"), "--steps", "32", *extra],
            env=env, capture_output=True, text=True, timeout=240,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        return done.stdout

    saved = torchrun(2, "--save-at", "20")
    assert "2 ranks, step 20" in saved
    assert (tmp_path / "run" / "pruning" / "prunekit_state.json").is_file()
    resumed = torchrun(3, "--resume")
    assert "3 ranks, step 32" in resumed
    total = resumed.strip().splitlines()[-1].split()
    assert total[0] == "total" and abs(float(total[-1]) - 0.8) < 0.005, resumed  # the target, over the pruned layers
